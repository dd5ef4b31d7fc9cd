// A load generator for threadchat's wire contract, on gorilla/websocket: make bench runs it
// against threadchat and against the hub peer to compare their latency tails.
//
// One goroutine per client reads everything the server sends; senders have a second one
// that writes. Every line a sender writes carries its id and the time it was written, so
// every client that receives it, the sender included, records how long it took. Phases:
// every client joins (and hears every join), then senders send for -seconds, then the
// generator waits for the lines still on their way, at most -drain seconds.
//
// It prints one line of key=value pairs.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// Dials under way at once: a burst of handshakes, without one for every client at once.
const dialsInFlight = 64

// Longest wait for every client to join and hear the settle marker.
const joinFor = 90 * time.Second

// Every time here is measured from epoch on the monotonic clock; one process both stamps
// and reads the lines, so no clock has to agree with another.
var epoch = time.Now()

func now() int64 { return int64(time.Since(epoch)) }

type client struct {
	id     int
	conn   *websocket.Conn
	joined chan struct{} // closed when the client has heard its own join
	// A slot is handed back here each time a sender hears one of its own lines.
	window chan struct{}
	// What this client's reader saw; read by main only after the reader has stopped
	// counting (lines received are also counted in the shared atomics as they arrive).
	latencies []uint32 // microseconds
	failed    atomic.Bool
}

type generator struct {
	clients   []*client
	received  atomic.Int64 // timestamped lines received, by all clients together
	lastAt    atomic.Int64 // when the latest of them arrived
	settled   atomic.Int64 // clients that have heard the settle marker
	settleTag string
	closing   atomic.Bool // set once the generator closes the sockets itself
	readers   sync.WaitGroup
}

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/", "the chat server's WebSocket URL; several, comma-separated, for instances sharing one room: clients take them in turn")
	count := flag.Int("clients", 100, "clients, all of them reading")
	senders := flag.Int("senders", 10, "clients that send")
	rate := flag.Float64("rate", 200, "lines per second, all senders together; 0: as fast as -window allows")
	window := flag.Int("window", 50, "with -rate 0, lines each sender keeps in flight (sent, not yet heard back)")
	seconds := flag.Float64("seconds", 10, "how long the senders send")
	drain := flag.Float64("drain", 10, "longest wait, after sending stops, for lines still on their way")
	gate := flag.Bool("gate", false, "print \"joined\" and \"drained\", and wait for a line on stdin after each: a caller can measure the server in between")
	flag.Parse()
	if *senders > *count || *senders < 1 {
		log.Fatal("-senders must be between 1 and -clients")
	}

	g := &generator{settleTag: fmt.Sprintf("settle-%d", time.Now().UnixNano())}
	g.join(*url, *count, *window)
	stdin := bufio.NewReader(os.Stdin)
	if *gate {
		fmt.Println("joined")
		stdin.ReadString('\n')
	}

	cpuBefore := ownCPU()
	start := now()
	sent := g.send(*senders, *rate, time.Duration(*seconds*float64(time.Second)))
	expected := sent * int64(*count)
	deadline := time.Now().Add(time.Duration(*drain * float64(time.Second)))
	for g.received.Load() < expected && time.Now().Before(deadline) && g.anyReading() {
		time.Sleep(10 * time.Millisecond)
	}
	cpu := ownCPU() - cpuBefore
	if *gate {
		fmt.Println("drained")
		stdin.ReadString('\n')
	}

	// Readers stop once their socket closes; only then are their latencies complete.
	g.closing.Store(true)
	for _, c := range g.clients {
		c.conn.Close()
	}
	g.readers.Wait()
	var all []uint32
	dropped := 0
	for _, c := range g.clients {
		all = append(all, c.latencies...)
		if c.failed.Load() {
			dropped++
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	received := int64(len(all))
	elapsed := time.Duration(g.lastAt.Load() - start).Seconds()
	perSecond := 0.0
	if elapsed > 0 {
		perSecond = float64(received) / elapsed
	}
	fmt.Printf("clients=%d senders=%d rate=%g window=%d sent=%d deliveries=%d deliveries_per_s=%.0f lost=%d dropped_clients=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f generator_cpu_s=%.2f\n",
		*count, *senders, *rate, *window, sent, received, perSecond, expected-received, dropped,
		quantile(all, 0.50), quantile(all, 0.99), quantile(all, 1), cpu.Seconds())
}

// join connects every client, a few dials at a time, then has the first one send a marker
// line: each server keeps every client's lines in order, so a client that has heard the
// marker has heard every join before it.
func (g *generator) join(url string, count, window int) {
	urls := strings.Split(url, ",")
	g.clients = make([]*client, count)
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	slots := make(chan struct{}, dialsInFlight)
	var dials sync.WaitGroup
	for i := range g.clients {
		c := &client{id: i, joined: make(chan struct{}), window: make(chan struct{}, window)}
		g.clients[i] = c
		slots <- struct{}{}
		dials.Add(1)
		go func() {
			defer func() { <-slots; dials.Done() }()
			conn, _, err := dialer.Dial(urls[c.id%len(urls)], nil)
			if err != nil {
				log.Fatalf("client %d cannot connect: %v", c.id, err)
			}
			c.conn = conn
			g.readers.Add(1)
			go g.read(c)
		}()
	}
	dials.Wait()
	timeout := time.After(joinFor)
	for _, c := range g.clients {
		select {
		case <-c.joined:
		case <-timeout:
			log.Fatalf("not every client heard its own join within %v", joinFor)
		}
	}
	if err := g.clients[0].conn.WriteMessage(websocket.TextMessage, []byte(g.settleTag)); err != nil {
		log.Fatalf("cannot send the settle marker: %v", err)
	}
	for stop := time.Now().Add(joinFor); g.settled.Load() < int64(count); {
		if time.Now().After(stop) {
			log.Fatalf("only %d of %d clients heard the settle marker within %v", g.settled.Load(), count, joinFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// read is a client's reader: everything the server sends comes through here.
func (g *generator) read(c *client) {
	defer g.readers.Done()
	var buf bytes.Buffer // reused: one allocation per client, not one per line
	first := true
	for {
		_, r, err := c.conn.NextReader()
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			if !g.closing.Load() {
				c.failed.Store(true)
			}
			if first {
				close(c.joined)
			}
			return
		}
		line := buf.Bytes()
		if first {
			// The first line a client hears is its own join.
			first = false
			close(c.joined)
			continue
		}
		// Lines from clients look like "user-N: TEXT"; joins have no ": ".
		colon := bytes.Index(line, []byte(": "))
		if colon < 0 {
			continue
		}
		text := line[colon+2:]
		if bytes.Equal(text, []byte(g.settleTag)) {
			g.settled.Add(1)
			continue
		}
		sender, sentAt, ok := parseStamp(text)
		if !ok {
			continue
		}
		at := now()
		c.latencies = append(c.latencies, uint32((at-sentAt)/1000))
		g.received.Add(1)
		g.lastAt.Store(at)
		if sender == c.id {
			select {
			case c.window <- struct{}{}:
			default:
			}
		}
	}
}

// A timestamped line is "t SENDER NANOSECONDS".
func stamp(sender int) []byte {
	return []byte("t " + strconv.Itoa(sender) + " " + strconv.FormatInt(now(), 10))
}

func parseStamp(text []byte) (sender int, sentAt int64, ok bool) {
	fields := bytes.Fields(text)
	if len(fields) != 3 || string(fields[0]) != "t" {
		return 0, 0, false
	}
	s, err1 := strconv.Atoi(string(fields[1]))
	t, err2 := strconv.ParseInt(string(fields[2]), 10, 64)
	return s, t, err1 == nil && err2 == nil
}

// send has the first `senders` clients send for `length`, each from a goroutine of its own,
// and returns how many lines they sent.
func (g *generator) send(senders int, rate float64, length time.Duration) int64 {
	var sent atomic.Int64
	var done sync.WaitGroup
	stop := time.Now().Add(length)
	for _, c := range g.clients[:senders] {
		done.Add(1)
		go func(c *client) {
			defer done.Done()
			if rate > 0 {
				// A fixed schedule, not a sleep after each send: a slow write must not
				// lower the rate, or it would hide the very delays being measured.
				interval := time.Duration(float64(senders) / rate * float64(time.Second))
				next := time.Now().Add(interval * time.Duration(c.id) / time.Duration(senders))
				for ; next.Before(stop); next = next.Add(interval) {
					time.Sleep(time.Until(next))
					if c.conn.WriteMessage(websocket.TextMessage, stamp(c.id)) != nil {
						return
					}
					sent.Add(1)
				}
				return
			}
			// As fast as it goes: a slot per line in flight, returned when the sender hears
			// the line back.
			for i := 0; i < cap(c.window); i++ {
				c.window <- struct{}{}
			}
			timeout := time.NewTimer(time.Until(stop))
			for {
				select {
				case <-c.window:
				case <-timeout.C:
					return
				}
				if c.conn.WriteMessage(websocket.TextMessage, stamp(c.id)) != nil {
					return
				}
				sent.Add(1)
			}
		}(c)
	}
	done.Wait()
	return sent.Load()
}

func (g *generator) anyReading() bool {
	for _, c := range g.clients {
		if !c.failed.Load() {
			return true
		}
	}
	return false
}

// quantile of sorted microseconds, in milliseconds: the nearest rank.
func quantile(sorted []uint32, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return float64(sorted[i]) / 1000
}

// ownCPU is the user plus system time this process has used.
func ownCPU() time.Duration {
	var usage syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
