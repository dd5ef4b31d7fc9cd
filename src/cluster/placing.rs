//! One round trip of the publisher: the scripts for what waits, and what each reply means
//! (placed, refused aloud, or in doubt until Redis is heard again).

use super::*;

impl Desk {
    /// Sends the owed leaves and `items` in one round trip.
    pub(super) fn send(&mut self, mut connection: Connection, items: Vec<Item>) {
        if items.is_empty() && self.owed.is_empty() {
            self.connection = Some(connection);
            return;
        }
        let who = identity(&self.identity).clone();
        let (marks, held) = (instance_key(&who.instance), held_key(&who.instance));
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let leaves = std::mem::take(&mut self.owed);
        for item in &leaves {
            let (Item::Leave { id, nickname } | Item::Detach { id, nickname, .. }) = item else {
                continue;
            };
            let (wait, owed) = match item {
                Item::Detach { wait, owed, .. } => (
                    wait.as_millis() as u64,
                    owed.map_or_else(String::new, |Position(ms, n)| format!("{ms}-{n}")),
                ),
                _ => (0, String::new()),
            };
            let keys = [
                EPOCH,
                &marks,
                STREAM,
                NICKNAMES,
                &held,
                SESSION_NAMES,
                DETACHED,
            ];
            let script = match item {
                Item::Detach { .. } => &self.scripts.detach,
                _ => &self.scripts.leave,
            };
            pipe.add_command(
                script_call(script, &keys)
                    .arg(&who.epoch)
                    .arg(self.max_entries)
                    .arg(item.line())
                    .arg(nickname)
                    .arg(holder(&who.instance, *id))
                    .arg(wait)
                    .arg(owed)
                    .clone(),
            );
        }
        let mut sent = Vec::with_capacity(items.len());
        for item in items {
            self.number += 1;
            let cmd = match &item {
                Item::Join {
                    id,
                    nickname,
                    session,
                } => {
                    let keys = [EPOCH, &marks, STREAM, NICKNAMES, &held, SESSION_NAMES];
                    let mut cmd = script_call(&self.scripts.join, &keys);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(item.line())
                        .arg(nickname)
                        .arg(holder(&who.instance, *id))
                        .arg(session.as_deref().unwrap_or(""));
                    cmd
                }
                Item::Resume { id, token } => {
                    let keys = [EPOCH, &marks, STREAM, NICKNAMES, &held, DETACHED];
                    let mut cmd = script_call(&self.scripts.resume, &keys);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(holder(&who.instance, *id))
                        .arg(token);
                    cmd
                }
                _ => {
                    let mut cmd = script_call(&self.scripts.say, &[EPOCH, &marks, STREAM]);
                    cmd.arg(&who.epoch)
                        .arg(self.number)
                        .arg(self.max_entries)
                        .arg(item.line());
                    cmd
                }
            };
            pipe.add_command(cmd);
            sent.push(Doubtful {
                number: self.number,
                item,
            });
        }
        let asked = Instant::now();
        let replied = pipe.query(&mut connection);
        let mut round_trip = crate::figures::Histogram::default();
        round_trip.record(asked.elapsed().as_micros() as u64);
        crate::figures::CLUSTER.round_trips.take(&mut round_trip);
        let replies: Vec<Value> = match replied {
            Ok(replies) => replies,
            Err(e) => {
                // Applied or not, nobody knows: settled once Redis answers again. A leave is
                // asked again: asked twice, it is announced once.
                self.owed = leaves;
                self.doubtful.extend(sent);
                return self.reach.down(&e.to_string());
            }
        };
        self.connection = Some(connection);
        let mut replies = replies.iter().map(reply_of);
        let mut trouble = None;
        for item in leaves {
            match replies.next() {
                Some(Reply::Placed(at)) => {
                    self.traced("leave", &at, &item.line());
                    self.no_longer_held(&item);
                }
                Some(Reply::Not(why)) if why == "gone" || why == "detached" => {
                    self.no_longer_held(&item);
                }
                Some(Reply::Not(why)) => {
                    self.owed.push(item);
                    Trouble::note(&mut trouble, why);
                }
                None => self.owed.push(item),
            }
        }
        for Doubtful { item, .. } in sent {
            match replies.next() {
                Some(Reply::Placed(at)) => {
                    if let Item::Join { id, nickname, .. } = &item {
                        self.held.insert(nickname.clone(), *id);
                    }
                    self.traced("XADD", &at, &item.line());
                }
                Some(Reply::Not(why)) if why == "taken" => self.refuse(item, Refusal::Taken),
                Some(Reply::Not(why)) if why == "unknown" => self.refuse(item, Refusal::Unknown),
                Some(Reply::Not(why)) => {
                    self.traced("refused", &why, &item.line());
                    self.refuse(item, Refusal::Unreachable);
                    Trouble::note(&mut trouble, why);
                }
                None => self.refuse(item, Refusal::Unreachable),
            }
        }
        match trouble {
            Some(Trouble::Fenced) => {
                let instance = who.instance.clone();
                self.fenced(&instance);
            }
            Some(Trouble::Lost) => self.register(),
            Some(Trouble::Away(why)) => self.lost_connection(&why),
            None => {}
        }
    }

    /// A leave or a detach went through (or was moot): the name is no longer this
    /// instance's to claim again.
    pub(super) fn no_longer_held(&mut self, item: &Item) {
        if let Item::Leave { nickname, .. } | Item::Detach { nickname, .. } = item {
            self.held.remove(nickname);
        }
    }

    pub(super) fn lost_connection(&mut self, why: &str) {
        self.connection = None;
        self.reach.down(why);
    }

    /// Settles the requests whose replies were lost: Redis says how far it applied them, and
    /// raises the floor past the rest, which can then never apply.
    pub(super) fn settle(&mut self) {
        let who = identity(&self.identity).clone();
        let highest = self.doubtful.iter().map(|d| d.number).max().unwrap_or(0);
        let mut pipe = redis::pipe();
        pipe.add_command(
            script_call(&self.scripts.settle, &[&instance_key(&who.instance)])
                .arg(highest)
                .clone(),
        );
        for doubtful in &self.doubtful {
            match &doubtful.item {
                Item::Join { nickname, .. } => {
                    pipe.cmd("HGET").arg(NICKNAMES).arg(nickname);
                }
                Item::Resume { token, .. } => {
                    pipe.cmd("HGET").arg(session_key(token)).arg("holder");
                }
                _ => {}
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return;
        };
        let replies: Vec<Value> = match pipe.query(connection) {
            Ok(replies) => replies,
            Err(e) => return self.lost_connection(&e.to_string()),
        };
        let mut replies = replies.iter();
        let applied = match replies.next() {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            Some(other) => {
                return match text(other).as_deref() {
                    Some("fenced") => self.fenced(&who.instance),
                    other => self.lost_connection(other.unwrap_or("no answer")),
                };
            }
            None => 0,
        };
        for Doubtful { number, item } in std::mem::take(&mut self.doubtful) {
            let holder_now = match &item {
                Item::Join { .. } | Item::Resume { .. } => replies.next().and_then(text),
                _ => None,
            };
            if number > applied {
                self.refuse(item, Refusal::Unreachable);
            } else if let Item::Join { id, nickname, .. } = &item {
                // Applied: its join line is in the stream, unless the name was taken.
                if holder_now == Some(holder(&who.instance, *id)) {
                    self.held.insert(nickname.clone(), *id);
                } else {
                    self.refuse(item, Refusal::Taken);
                }
            } else if let Item::Resume { id, .. } = &item {
                // Applied: its entry is in the stream, unless the token was unknown.
                if holder_now != Some(holder(&who.instance, *id)) {
                    self.refuse(item, Refusal::Unknown);
                }
            }
            // An applied line simply comes back through the stream.
        }
    }

    pub(super) fn refuse(&self, item: Item, why: Refusal) {
        let _ = self.news.send(News::Refused(item, why));
    }

    pub(super) fn traced(&self, command: &str, id: &str, line: &str) {
        if self.trace.is_on() {
            self.trace
                .decision("stream", &format!("{command} {STREAM} -> {id}: {line:?}"));
        }
    }
}
