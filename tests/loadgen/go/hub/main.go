// A chat server in the hub pattern, on gorilla/websocket, speaking threadchat's wire
// contract: the peer that make bench runs beside threadchat to compare latency tails.
//
// One hub goroutine owns the set of clients and the names they hold; everything else talks
// to it over channels, so nothing here needs a lock. Each client has a read pump, which
// hands its lines to the hub, and a write pump, the only goroutine that writes to its socket.
//
// Usage: hub ADDR (port 0 picks a free one; the address is printed as "listening on ADDR").
package main

import (
	"fmt"
	"log"
	"math/rand"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// How long one frame may take to reach the kernel before the client counts as gone:
	// a write pump stuck on a dead peer would otherwise hold its goroutine forever.
	writeWait = 10 * time.Second
	// A client that sends nothing, not even a pong, for this long is gone.
	pongWait = 60 * time.Second
	// Pings go out well inside pongWait so a live but silent client always answers in time.
	pingPeriod = pongWait * 9 / 10
	// Longest line accepted, as threadchat's default --max-message-bytes.
	maxMessageSize = 64 * 1024
	// Lines queued for one client before the hub gives up on it. A client this far behind
	// would otherwise make the hub wait, and with it everyone else.
	sendQueue = 4096
	// Nicknames are user-N with N below this, as in the cookbook.
	nicknameSpace = 100000
)

type client struct {
	name string
	conn *websocket.Conn
	// Lines for this client, written by its write pump. Only the hub sends on it and only
	// the hub closes it, so a closed channel always means the hub has let the client go.
	send chan []byte
}

// hub is the only owner of clients and names; its channels are the only way in.
type hub struct {
	register   chan *client
	unregister chan *client
	broadcast  chan []byte
	clients    map[*client]bool
	names      map[string]bool
}

func newHub() *hub {
	return &hub{
		register:   make(chan *client),
		unregister: make(chan *client),
		// A little slack so that read pumps rarely wait on a busy hub.
		broadcast: make(chan []byte, 256),
		clients:   make(map[*client]bool),
		names:     make(map[string]bool),
	}
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			// Names are drawn here, where the set of taken ones lives, so two clients
			// can never draw the same one.
			c.name = h.freeName()
			h.names[c.name] = true
			// The newcomer hears its own join first: it is the first line in its queue,
			// and the others get it in the same pass below.
			h.clients[c] = true
			h.deliver([]byte(" .... " + c.name + " has joined."))
		case c := <-h.unregister:
			h.drop(c)
		case line := <-h.broadcast:
			h.deliver(line)
		}
	}
}

func (h *hub) freeName() string {
	for {
		name := fmt.Sprintf("user-%d", rand.Intn(nicknameSpace))
		if !h.names[name] {
			return name
		}
	}
}

// deliver queues a line for every client, the sender included. It never blocks: a client
// whose queue is full is dropped rather than allowed to hold up the rest.
func (h *hub) deliver(line []byte) {
	for c := range h.clients {
		select {
		case c.send <- line:
		default:
			h.drop(c)
		}
	}
}

func (h *hub) drop(c *client) {
	if h.clients[c] {
		delete(h.clients, c)
		delete(h.names, c.name)
		close(c.send)
	}
}

// readPump turns the client's frames into broadcasts, prefixed with its name, until the
// connection fails; then it tells the hub and closes the socket.
func (c *client) readPump(h *hub) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	// Any pong proves the client alive: push the deadline out again.
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(pongWait))
	})
	for {
		kind, text, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		// A line is proof of life too; threadchat's clients may never see a ping.
		c.conn.SetReadDeadline(time.Now().Add(pongWait))
		if kind != websocket.TextMessage {
			continue
		}
		h.broadcast <- append([]byte(c.name+": "), text...)
	}
}

// writePump is the socket's only writer (gorilla allows one at a time): it sends the
// client's lines, one frame each as threadchat does, and the pings that keep it honest.
func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case line, open := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !open {
				// The hub let go of this client: say goodbye, best effort.
				c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, line); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: hub ADDR")
	}
	listener, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("listening on", listener.Addr())

	// Different names from run to run, as the cookbook's random ones are.
	rand.Seed(time.Now().UnixNano())
	h := newHub()
	go h.run()
	// Browsers from any page may connect, as to threadchat with its defaults.
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has already answered with the error.
		}
		c := &client{conn: conn, send: make(chan []byte, sendQueue)}
		h.register <- c
		go c.writePump()
		go c.readPump(h)
	})
	log.Fatal(http.Serve(listener, nil))
}
