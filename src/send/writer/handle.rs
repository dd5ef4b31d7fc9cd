//! The handle to a writer thread: how the room and the readers hand it clients and frames,
//! and wake it; and, on the thread's side, how it takes them in. The thread itself is
//! [`Pump`] in `writer.rs`.

use super::*;

impl Writer {
    /// Starts writer thread `index`, reading the logs of both dialects. It tells the room
    /// through `events` of the clients it evicts or loses.
    pub fn spawn(
        index: usize,
        logs: [LogReader; 2],
        events: Sender<Event>,
        write_timeout: Duration,
        trace: Trace,
    ) -> io::Result<Arc<Writer>> {
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let writer = Arc::new(Writer {
            jobs,
            asleep: AtomicBool::new(false),
            poller: Poller::new()?,
            figures: WriterFigures::default(),
        });
        let pump = Pump {
            writer: writer.clone(),
            inbox,
            logs,
            events,
            clients: Vec::new(),
            free: Vec::new(),
            blocked: 0,
            draining: Vec::new(),
            leaves: VecDeque::new(),
            snapshots: [Vec::new(), Vec::new()],
            heads: [0, 0],
            due: Vec::new(),
            trim_due: false,
            gather: Gather::default(),
            this_pass: (0, 0),
            delays: Histogram::default(),
            appends: [0, 0],
            furthest_lag: 0,
            write_timeout,
            trace,
        };
        thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || pump.run())?;
        Ok(writer)
    }

    /// Hands a newly joined client to this writer.
    pub fn add(&self, id: ClientId, outbox: Arc<Outbox>, cursor: Cursor) {
        self.send(Job::Add(id, outbox, cursor));
    }

    /// Queues a frame for one client alone.
    pub fn push(&self, outbox: &Arc<Outbox>, frame: Frame) -> Result<(), Refused> {
        let wake = outbox.push(frame)?;
        self.ready(outbox, wake);
        Ok(())
    }

    /// Queues a frame for one client alone before the line at log offset `at`.
    pub fn push_before(
        &self,
        outbox: &Arc<Outbox>,
        frame: Frame,
        at: Option<u64>,
    ) -> Result<(), Refused> {
        let wake = outbox.push_before(frame, at)?;
        self.ready(outbox, wake);
        Ok(())
    }

    /// Ends the client's open phase with `last` as its final frame. Returns whether this
    /// call ended it: then the caller tells the room, if it is not the room.
    pub fn close(&self, outbox: &Arc<Outbox>, last: Option<Frame>) -> bool {
        let (ended, wake) = outbox.close(last);
        self.ready(outbox, wake);
        ended
    }

    /// The outbox said the writer must look at it.
    pub(super) fn ready(&self, outbox: &Arc<Outbox>, wake: Wake) {
        if wake == Wake::Writer {
            self.send(Job::Ready(outbox.clone()));
        }
    }

    /// The log grew: make sure the writer is not sleeping through it.
    pub fn wake(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            self.poller.wake();
        }
    }

    pub(super) fn send(&self, job: Job) {
        // Fails only if the writer thread is gone, when the process is ending.
        let _ = self.jobs.send(job);
        fence(Ordering::SeqCst);
        self.wake();
    }
}

impl Pump {
    /// Takes in what the room and the readers handed over since the last turn: new clients,
    /// and clients with private frames or closing.
    pub(super) fn take_jobs(&mut self) {
        while let Ok(job) = self.inbox.try_recv() {
            match job {
                Job::Add(id, outbox, cursor) => self.add(id, outbox, cursor),
                Job::Ready(outbox) => {
                    let slot = outbox.slot.load(Ordering::Relaxed);
                    let ours = self.clients.get(slot).and_then(Option::as_ref);
                    // Not added yet: the Add serves it. Gone: nothing to do.
                    if ours.is_some_and(|c| Arc::ptr_eq(&c.delivery.outbox, &outbox)) {
                        self.due.push(slot);
                    }
                }
            }
        }
    }

    /// Takes a new client into this writer's hands: its socket watched for room, a slot, and
    /// its first pass due.
    fn add(&mut self, id: ClientId, outbox: Arc<Outbox>, cursor: Cursor) {
        let slot = self.free.pop().unwrap_or(self.clients.len());
        // Edge-triggered: an event each time a full socket has room again.
        let watched = self
            .writer
            .poller
            .watch_writable(outbox.socket.as_raw_fd(), slot as u64);
        if watched.is_err() {
            self.free.push(slot);
            self.tell_room_if_ended(id, outbox.done(), false);
            let _ = outbox.socket.shutdown(Shutdown::Both);
            return;
        }
        outbox.slot.store(slot, Ordering::Relaxed);
        let client = Client {
            id,
            delivery: Delivery::new(outbox, cursor, self.trace),
            blocked: false,
            last_progress: Instant::now(),
            added_us: figures::since_start_us(),
        };
        if slot == self.clients.len() {
            self.clients.push(Some(client));
        } else {
            self.clients[slot] = Some(client);
        }
        self.due.push(slot);
    }
}
