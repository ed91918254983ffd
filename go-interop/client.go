package herd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Client is a Go service in a herd: a ZeroMQ DEALER connected to a node's bridge ROUTER
// (PROTOCOL.md, Bridge). It takes actor names on that node (Handle), and tells and asks any
// actor of the herd (Tell, Ask) through the node.
//
// Every method of Client is safe for concurrent use. The ZeroMQ socket is not thread-safe, so
// it is used under one mutex (a ZeroMQ socket may move between threads behind a full memory
// barrier, which a mutex is). Nothing sleeps inside libzmq: the socket's ZMQ_FD is waited on by
// Go's own network poller, so a reply wakes the goroutine that delivers it directly, and an ask
// is sent by the asking goroutine itself (no hand-off to a socket thread and no wake-up socket).
// Tells are queued and sent by a flusher goroutine: consecutive tells to one target that are
// queued by the time it runs go out as one TELLS envelope (never waiting for more: a lone tell
// goes out at once). Handlers run on one goroutine per name, so a name sees its messages one at
// a time, in order.
//
// Delivery is at-most-once, as everywhere in the herd: a tell may be lost when the bridge is
// lost; an ask then fails with ErrNodeUnavailable (or is retried, see WithRetries).
type Client struct {
	o        options
	endpoint string
	zctx     *zmq.Context
	id       string // unique per client, for the inproc monitor endpoints

	closing chan struct{}
	done    chan struct{} // closed once the client is shut down
	once    sync.Once
	corr    atomic.Uint64
	bg      sync.WaitGroup // the flusher and the timer goroutines

	// The send queue, in call order (guarded by qmu).
	qmu      sync.Mutex
	room     *sync.Cond // signalled when the queue shrinks or the client closes
	queue    []outItem
	spare    []outItem
	qbytes   int
	flushing bool // a goroutine is sending the queue (and will look again before it stops)
	qclosed  bool
	kick     chan struct{} // wakes the flusher goroutine (capacity 1)

	mu    sync.Mutex // guards boxes, names, node
	boxes map[string]*mailbox
	names []string
	node  string

	runCtx    context.Context
	runCancel context.CancelFunc
	workers   sync.WaitGroup

	st struct {
		tells, asks, replies, received, dropped, badMessages, reconnects, heartbeats, batches atomic.Int64
	}

	maxFrame atomic.Int64 // the node's max_frame_size (WELCOME); DefaultMaxFrameSize before

	// The socket and the session (guarded by smu).
	smu         sync.Mutex
	sock        *zmq.Socket
	mon         *zmq.Socket
	watchers    []*os.File // dup'd ZMQ_FDs of sock and mon, waited on by the Go poller
	gen         int
	dialDone    chan error // nil once the first hello was answered
	welcomed    bool
	hbEvery     time.Duration
	hbSeq       int64
	lastHB      time.Time
	lastHeard   time.Time
	pending     map[uint64]*pendingAsk
	nextCheck   time.Time
	stuck       [][]byte // messages ZeroMQ refused (high-water mark): sent first, in order
	lastRehello time.Time
	scratch     []byte // where the flusher builds messages (ZeroMQ copies what it sends)
	inbox       [][]byte
	timerKick   chan struct{}
}

type itemKind uint8

const (
	itemTell itemKind = iota // prefix + data: a tell's encoded dest/target and body
	itemRaw                  // data is a whole envelope
	itemAsk                  // ask.data is a whole ASK envelope
)

type outItem struct {
	kind   itemKind
	prefix []byte // tells: the encoded dest_node and target fields (also the coalescing key)
	data   []byte
	ask    *pendingAsk
}

type askResult struct {
	value any
	err   error
}

type pendingAsk struct {
	corr      uint64
	target    string
	data      []byte
	result    chan askResult // capacity 1: the receiving side never blocks on it
	deadline  time.Time
	triesLeft int
	perTry    time.Duration
	tryEnd    time.Time // zero when the ask does not retry
}

type inbound struct {
	body  any
	isAsk bool
	dest  string
	corr  any
}

type mailbox struct {
	name    string
	ch      chan inbound
	started bool
}

// Stats are the client's counters. TellBatches counts the ZeroMQ messages that carried tells
// (TELL or TELLS): TellsSent / TellBatches is the average coalescing.
type Stats struct {
	TellsSent, AsksSent, RepliesSent, Received, Dropped, BadMessages, Reconnects, Heartbeats int64
	TellBatches                                                                              int64
}

var clientIDs atomic.Int64

// Dial connects to the bridge at endpoint (e.g. "tcp://127.0.0.1:13003"), says SERVICE_HELLO
// and waits for the node's WELCOME, within ctx's deadline (or WithConnectTimeout). A refused
// hello returns a *BridgeError (Code "auth", "version", "name_taken", ...; "curve" when the
// CURVE handshake itself was refused); no answer in time returns an error wrapping
// ErrNodeUnavailable.
func Dial(ctx context.Context, endpoint string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if o.service == "" {
		return nil, errors.New("herd: WithService is required")
	}
	if o.logger == nil {
		o.logger = log.Default()
	}
	zctx, err := zmq.NewContext()
	if err != nil {
		return nil, fmt.Errorf("herd: zmq context: %w", err)
	}
	dialDone := make(chan error, 1)
	c := &Client{
		o: o, endpoint: endpoint, zctx: zctx, id: fmt.Sprintf("%d-%p", clientIDs.Add(1), &o),
		closing: make(chan struct{}), done: make(chan struct{}), kick: make(chan struct{}, 1),
		timerKick: make(chan struct{}, 1), dialDone: dialDone,
		boxes: map[string]*mailbox{}, pending: map[uint64]*pendingAsk{},
	}
	c.room = sync.NewCond(&c.qmu)
	c.maxFrame.Store(DefaultMaxFrameSize)
	c.runCtx, c.runCancel = context.WithCancel(context.Background())
	for _, n := range o.names {
		c.names = append(c.names, n)
		c.boxes[n] = &mailbox{name: n, ch: make(chan inbound, o.mailboxSize)}
	}
	for n, h := range o.handlers {
		c.startWorker(c.boxes[n], h)
	}
	c.smu.Lock()
	err = c.openSocket()
	c.smu.Unlock()
	if err != nil {
		c.shutdownNow()
		return nil, fmt.Errorf("herd: connect %s: %w", endpoint, err)
	}
	c.bg.Add(2)
	go c.flusher()
	go c.timerLoop()

	wait := o.connectTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-dialDone:
		if err == nil {
			return c, nil
		}
		c.Close()
		return nil, err
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("herd: dial %s: %w", endpoint, ctx.Err())
	case <-timer.C:
		c.Close()
		return nil, fmt.Errorf("%w: no WELCOME from %s within %v", ErrNodeUnavailable, endpoint, wait)
	}
}

// Node is the name of the bridge's node (from its WELCOME).
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.node
}

// Service is the service name given to WithService.
func (c *Client) Service() string { return c.o.service }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		TellsSent: c.st.tells.Load(), AsksSent: c.st.asks.Load(), RepliesSent: c.st.replies.Load(),
		Received: c.st.received.Load(), Dropped: c.st.dropped.Load(), BadMessages: c.st.badMessages.Load(),
		Reconnects: c.st.reconnects.Load(), Heartbeats: c.st.heartbeats.Load(), TellBatches: c.st.batches.Load(),
	}
}

// Handle takes name on the bridge's node (REGISTER, unless the SERVICE_HELLO announced it
// already) and answers its messages with h: the herd reaches it as "name@<node>". An ask whose
// handler returns an error gets an error reply [type_name, message] (see RemoteError; the type
// name is the error's TypeName() when it has one, else "Error"). A handler that panics answers
// with type "panic". Calling Handle again for a name replaces nothing: it is an error.
func (c *Client) Handle(name string, h Handler) error {
	if err := checkName(name); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("herd: nil handler for %q", name)
	}
	c.mu.Lock()
	box, known := c.boxes[name]
	if known && box.started {
		c.mu.Unlock()
		return fmt.Errorf("herd: %q already has a handler", name)
	}
	if !known {
		box = &mailbox{name: name, ch: make(chan inbound, c.o.mailboxSize)}
		c.boxes[name] = box
		c.names = append(c.names, name)
	}
	c.startWorker(box, h)
	c.mu.Unlock()
	if known {
		return nil
	}
	data, err := Marshal([]any{KindRegister, []string{name}})
	if err != nil {
		return err
	}
	return c.enqueue(outItem{kind: itemRaw, data: data}, true)
}

// Unhandle gives name back (UNREGISTER); messages still in its mailbox are dropped.
func (c *Client) Unhandle(name string) error {
	c.mu.Lock()
	box, ok := c.boxes[name]
	if ok {
		delete(c.boxes, name)
		for i, n := range c.names {
			if n == name {
				c.names = append(c.names[:i], c.names[i+1:]...)
				break
			}
		}
		close(box.ch)
	}
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q is not a name of this service", ErrActorNotFound, name)
	}
	data, err := Marshal([]any{KindUnregister, []string{name}})
	if err != nil {
		return err
	}
	return c.enqueue(outItem{kind: itemRaw, data: data}, true)
}

// startWorker runs h over box's mailbox; c.mu is held or the client is not running yet.
func (c *Client) startWorker(box *mailbox, h Handler) {
	box.started = true
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		askCtx := context.WithValue(c.runCtx, askKey{}, true)
		for m := range box.ch {
			ctx := c.runCtx
			if m.isAsk {
				ctx = askCtx
			}
			value, err := c.call(h, ctx, m.body)
			if !m.isAsk {
				if err != nil {
					c.o.logger.Printf("herd: service %s: tell to %s failed: %v", c.o.service, box.name, err)
				}
				continue
			}
			c.reply(m.dest, m.corr, value, err)
		}
	}()
}

type askKey struct{}

// IsAsk reports whether a handler runs for an ask (its result is the reply) rather than a tell.
// The context is cancelled when the client closes.
func IsAsk(ctx context.Context) bool {
	v, _ := ctx.Value(askKey{}).(bool)
	return v
}

func (c *Client) call(h Handler, ctx context.Context, msg any) (value any, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &RemoteError{Type: "panic", Message: fmt.Sprint(r)}
		}
	}()
	return h(ctx, msg)
}

func (c *Client) reply(dest string, corr any, value any, err error) {
	var data []byte
	if err == nil {
		data, err = Marshal([]any{KindReply, dest, corr, true, value})
		if err == nil && len(data) > int(c.maxFrame.Load()) {
			err = &RemoteError{Type: "FrameTooLarge", Message: fmt.Sprintf("the reply encodes to %d bytes, over the node's max_frame_size %d", len(data), c.maxFrame.Load())}
		} else if err != nil { // the handler's result cannot be sent: say so instead
			err = &RemoteError{Type: "TypeError", Message: fmt.Sprintf("reply cannot be encoded: %v", err)}
		}
	}
	if err != nil {
		data, _ = Marshal([]any{KindReply, dest, corr, false, errorReply(err)})
	}
	if c.enqueue(outItem{kind: itemRaw, data: data}, true) == nil {
		c.st.replies.Add(1)
	}
}

// targetFields returns the dest_node and target fields of a TELL or ASK to "name" or
// "name@Node" (dest_node nil: the bridge's node).
func targetFields(t string) (any, any, error) {
	node, name, err := SplitTarget(t)
	if err != nil {
		return nil, nil, err
	}
	if node == "" {
		return nil, name, nil
	}
	return node, name, nil
}

var encPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// encode marshals a value into a slice of its own (it may wait in the send queue), reusing
// encoder buffers.
func encode(v any) ([]byte, error) {
	buf := encPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer encPool.Put(buf)
	if err := newEncoder(buf).Encode(v); err != nil {
		return nil, fmt.Errorf("herd: message cannot be encoded: %w", err)
	}
	return bytes.Clone(buf.Bytes()), nil
}

// Tell sends msg to target ("name" on the bridge's node, or "name@Node") without waiting for
// anything. It blocks only while the client's send queue is full (backpressure). A message
// that cannot fit in the node's max_frame_size is refused (an error wrapping ErrFrameTooLarge).
func (c *Client) Tell(target string, msg any) error {
	node, name, err := SplitTarget(target)
	if err != nil {
		return err
	}
	prefix := appendMsgpackStr(nil, name)
	if node == "" {
		prefix = append([]byte{0xc0}, prefix...)
	} else {
		prefix = append(appendMsgpackStr(make([]byte, 0, len(node)+len(prefix)+3), node), prefix...)
	}
	return c.tell(prefix, msg)
}

// TellKey tells the keyed actor (kind, key), wherever the herd's ring places it.
func (c *Client) TellKey(kind, key string, msg any) error {
	prefix := []byte{0xc0, 0x92}
	prefix = appendMsgpackStr(appendMsgpackStr(prefix, kind), key)
	return c.tell(prefix, msg)
}

func (c *Client) tell(prefix []byte, msg any) error {
	body, err := encode(msg)
	if err != nil {
		return err
	}
	if limit := int(c.maxFrame.Load()); len(body)+len(prefix)+2 > limit {
		return fmt.Errorf("%w: a tell of %d bytes is over the node's max_frame_size %d", ErrFrameTooLarge, len(body)+len(prefix)+2, limit)
	}
	if err := c.enqueue(outItem{kind: itemTell, prefix: prefix, data: body}, false); err != nil {
		return err
	}
	c.st.tells.Add(1)
	return nil
}

// Ask sends msg to target ("name" or "name@Node") and waits for the reply, at most until ctx's
// deadline (WithAskTimeout when it has none). Errors: a *RemoteError for an error reply
// (errors.Is matches ErrActorNotFound, ErrNodeUnavailable, ... by its type), an error wrapping
// ErrAskTimeout and ctx.Err() when the deadline passed, ErrNodeUnavailable when the bridge was
// lost while waiting, ErrClosed after Close. With WithRetries the ask is re-sent on a fresh
// socket after each per-try timeout (Lazy Pirate).
func (c *Client) Ask(ctx context.Context, target string, msg any) (any, error) {
	dest, tgt, err := targetFields(target)
	if err != nil {
		return nil, err
	}
	return c.ask(ctx, target, dest, tgt, msg)
}

// AskKey asks the keyed actor (kind, key), wherever the herd's ring places it.
func (c *Client) AskKey(ctx context.Context, kind, key string, msg any) (any, error) {
	return c.ask(ctx, kind+":"+key, nil, []any{kind, key}, msg)
}

func (c *Client) ask(ctx context.Context, name string, dest, tgt any, msg any) (any, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.o.askTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	corr := c.corr.Add(1)
	data, err := encode([]any{KindAsk, dest, tgt, msg, c.o.service, corr})
	if err != nil {
		return nil, err
	}
	if limit := int(c.maxFrame.Load()); len(data) > limit {
		return nil, fmt.Errorf("%w: an ask of %d bytes is over the node's max_frame_size %d", ErrFrameTooLarge, len(data), limit)
	}
	p := &pendingAsk{corr: corr, target: name, data: data, result: make(chan askResult, 1), deadline: deadline}
	if c.o.retries > 0 {
		p.triesLeft, p.perTry = c.o.retries, c.o.tryTimeout
	}
	if err := c.enqueue(outItem{kind: itemAsk, ask: p}, true); err != nil {
		return nil, err
	}
	c.st.asks.Add(1)
	select {
	case r := <-p.result:
		return r.value, r.err
	case <-ctx.Done():
		c.smu.Lock()
		delete(c.pending, corr)
		c.smu.Unlock()
		select { // the reply may have raced the deadline
		case r := <-p.result:
			return r.value, r.err
		default:
		}
		return nil, fmt.Errorf("%w: no reply from %s within the deadline: %w", ErrAskTimeout, name, ctx.Err())
	case <-c.done:
		return nil, ErrClosed
	}
}

// Close says BYE to the node, fails pending asks with ErrClosed, stops the handlers and closes
// the sockets. It is safe to call more than once.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.qmu.Lock()
		c.qclosed = true
		c.room.Broadcast()
		c.qmu.Unlock()
		close(c.closing)
		c.bg.Wait() // the flusher has sent what was queued
		c.smu.Lock()
		c.shutdown(true)
		c.smu.Unlock()
		c.shutdownNow()
	})
	return nil
}

// shutdownNow stops the handlers and ends the ZeroMQ context (the socket is closed already).
func (c *Client) shutdownNow() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	c.runCancel()
	c.workers.Wait()
	c.zctx.Term()
}

// ---- the send queue ---------------------------------------------------------------------------

// enqueue appends it to the send queue, waiting while the queue is full. With direct (asks,
// replies, registrations) the calling goroutine sends the queue itself when nobody else is
// sending, so a lone ask costs no goroutine hand-off; tells wake the flusher goroutine instead,
// so that a fast teller keeps encoding while earlier tells go out, and tells queued meanwhile
// leave together.
func (c *Client) enqueue(it outItem, direct bool) error {
	size := len(it.data) + len(it.prefix)
	if it.ask != nil {
		size = len(it.ask.data)
	}
	c.qmu.Lock()
	for !c.qclosed && len(c.queue) >= c.o.sendQueue {
		c.room.Wait()
	}
	if c.qclosed {
		c.qmu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, it)
	c.qbytes += size
	if c.flushing {
		c.qmu.Unlock()
		return nil
	}
	c.flushing = true
	if !direct {
		c.qmu.Unlock()
		select {
		case c.kick <- struct{}{}:
		default:
		}
		return nil
	}
	batch := c.takeQueue()
	c.qmu.Unlock()
	c.sendBatch(batch)
	c.qmu.Lock()
	if len(c.queue) == 0 {
		c.flushing = false
		c.qmu.Unlock()
		return nil
	}
	c.qmu.Unlock()
	select { // more came meanwhile: the flusher goroutine takes over
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// takeQueue swaps the queue out; qmu is held.
func (c *Client) takeQueue() []outItem {
	batch := c.queue
	c.queue, c.spare = c.spare[:0], nil
	c.qbytes = 0
	c.room.Broadcast()
	return batch
}

// flusher sends the queue whenever it is kicked, until the queue is empty.
func (c *Client) flusher() {
	defer c.bg.Done()
	for {
		select {
		case <-c.kick:
		case <-c.closing:
			c.qmu.Lock()
			batch := c.takeQueue()
			c.qmu.Unlock()
			c.sendBatch(batch)
			return
		}
		for {
			c.qmu.Lock()
			if len(c.queue) == 0 {
				c.flushing = false
				c.qmu.Unlock()
				break
			}
			batch := c.takeQueue()
			c.qmu.Unlock()
			c.sendBatch(batch)
			c.waitUnstuck()
		}
	}
}

// waitUnstuck holds the flusher (and so, once the queue fills, the tellers) while ZeroMQ
// refuses messages; the socket's events and the timer retry them.
func (c *Client) waitUnstuck() {
	for {
		c.smu.Lock()
		n := len(c.stuck)
		c.smu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-c.closing:
			return
		case <-time.After(5 * time.Millisecond):
		}
		c.smu.Lock()
		c.flushStuck()
		c.smu.Unlock()
	}
}

// sendBatch sends a batch taken from the queue, in order, coalescing runs of tells to one
// target into TELLS envelopes under the node's max_frame_size.
func (c *Client) sendBatch(batch []outItem) {
	if len(batch) == 0 {
		return
	}
	c.smu.Lock()
	limit := int(c.maxFrame.Load())
	for i := 0; i < len(batch); {
		it := batch[i]
		switch it.kind {
		case itemRaw:
			c.send(it.data)
			i++
			continue
		case itemAsk:
			p := it.ask
			if p.perTry > 0 {
				p.tryEnd = time.Now().Add(p.perTry)
				c.kickTimer()
			}
			c.pending[p.corr] = p
			c.nextCheck = time.Time{}
			c.send(p.data)
			i++
			continue
		}
		// a run of tells to one target: [2, dest, target, body] or [15, dest, target, [bodies]]
		overhead := 1 + 1 + len(it.prefix) + 5
		size := overhead + len(it.data)
		j := i + 1
		for j < len(batch) && batch[j].kind == itemTell && bytes.Equal(batch[j].prefix, it.prefix) &&
			size+len(batch[j].data) <= limit {
			size += len(batch[j].data)
			j++
		}
		buf := appendTellHead(c.scratch[:0], it.prefix, j-i)
		for k := i; k < j; k++ {
			buf = append(buf, batch[k].data...)
		}
		c.scratch = buf
		c.send(buf)
		c.st.batches.Add(1)
		i = j
	}
	c.afterSend()
	c.smu.Unlock()
	clear(batch)
	c.qmu.Lock()
	if c.spare == nil {
		c.spare = batch[:0]
	}
	c.qmu.Unlock()
}

// appendTellHead appends all of a TELL but its body (n == 1), or all of a TELLS but its n
// bodies: prefix is the encoded dest_node and target; the encoded bodies follow, concatenated.
func appendTellHead(b, prefix []byte, n int) []byte {
	if n == 1 {
		return append(append(b, 0x94, KindTell), prefix...)
	}
	b = append(append(b, 0x94, KindTells), prefix...)
	return appendMsgpackArrayHeader(b, n)
}

func appendMsgpackStr(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n < 1<<8:
		b = append(b, 0xd9, byte(n))
	case n < 1<<16:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, s...)
}

func appendMsgpackArrayHeader(b []byte, n int) []byte {
	switch {
	case n < 16:
		return append(b, 0x90|byte(n))
	case n < 1<<16:
		return append(b, 0xdc, byte(n>>8), byte(n))
	default:
		return append(b, 0xdd, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// ---- the socket (every function below runs with smu held) --------------------------------------

func (c *Client) logf(format string, args ...any) {
	c.o.logger.Printf("herd: service %s: "+format, append([]any{c.o.service}, args...)...)
}

// openSocket opens a DEALER (with its monitor), starts waiting on their events and sends
// SERVICE_HELLO first.
func (c *Client) openSocket() error {
	c.gen++
	s, err := c.zctx.NewSocket(zmq.DEALER)
	if err != nil {
		return err
	}
	fail := func(err error) error { s.Close(); return err }
	if err := s.SetLinger(0); err != nil {
		return fail(err)
	}
	// Deep queues: bursts should not stall on the default 1000-message HWM. Tells travel in
	// batches (TELLS), so 20,000 messages is plenty, and bounds what waits when the node pushes
	// back (it stops reading while one of its actors has a large backlog).
	s.SetSndhwm(20000)
	s.SetRcvhwm(200000)
	s.SetReconnectIvl(100 * time.Millisecond)
	s.SetReconnectIvlMax(time.Second)
	if c.o.curve {
		if err := s.ClientAuthCurve(c.o.serverKey, c.o.clientPub, c.o.clientSec); err != nil {
			return fail(fmt.Errorf("CURVE keys: %w", err))
		}
	}
	monAddr := fmt.Sprintf("inproc://herd-mon-%s-%d", c.id, c.gen)
	events := zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL |
		zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
	if err := s.Monitor(monAddr, events); err != nil {
		return fail(err)
	}
	mon, err := c.zctx.NewSocket(zmq.PAIR)
	if err != nil {
		return fail(err)
	}
	if err := mon.Connect(monAddr); err != nil {
		mon.Close()
		return fail(err)
	}
	if err := s.Connect(c.endpoint); err != nil {
		mon.Close()
		return fail(err)
	}
	c.sock, c.mon = s, mon
	c.welcomed = false
	c.stuck = c.stuck[:0]
	c.lastHeard = time.Now()
	for _, w := range []struct {
		sock  *zmq.Socket
		ready func()
	}{{s, c.receive}, {mon, c.monitorEvents}} {
		f, err := watchSocket(w.sock)
		if err != nil {
			c.closeSocket(0)
			return err
		}
		c.watchers = append(c.watchers, f)
		go c.watch(f, w.sock, c.gen, w.ready)
	}
	if err := c.sendHello(); err != nil {
		return err
	}
	// ZMQ_FD signals only after a read found nothing (until then a pipe's reader counts as
	// awake, and nobody is woken): look once now.
	c.monitorEvents()
	c.afterSend()
	return nil
}

// watch runs ready (with smu held) whenever the socket's ZMQ_FD signals, until the socket is
// replaced or closed. ZMQ_FD is edge-triggered, as is Go's poller: ready drains the socket and
// reads ZMQ_EVENTS, after which the FD signals again when there is something new.
func (c *Client) watch(f *os.File, s *zmq.Socket, gen int, ready func()) {
	rc, err := f.SyscallConn()
	if err != nil {
		c.pollLoop(s, gen, ready)
		return
	}
	for {
		waited := false
		err := rc.Read(func(uintptr) bool {
			if waited {
				return true
			}
			waited = true
			return false
		})
		c.smu.Lock()
		if c.gen != gen || c.sock == nil {
			c.smu.Unlock()
			return
		}
		if err != nil { // the FD is not pollable here: poll on a timer instead
			c.smu.Unlock()
			c.pollLoop(s, gen, ready)
			return
		}
		ready()
		c.smu.Unlock()
	}
}

// pollLoop is watch's fallback when Go's poller cannot wait on a ZMQ_FD.
func (c *Client) pollLoop(s *zmq.Socket, gen int, ready func()) {
	for {
		select {
		case <-c.closing:
			return
		case <-time.After(time.Millisecond):
		}
		c.smu.Lock()
		if c.gen != gen || c.sock == nil {
			c.smu.Unlock()
			return
		}
		ready()
		c.smu.Unlock()
	}
}

func (c *Client) sendHello() error {
	var cred any
	if c.o.secret != nil {
		cred = BridgeCredential(c.o.secret, c.o.service)
	}
	c.mu.Lock()
	names := append([]string{}, c.names...)
	c.mu.Unlock()
	data, err := Marshal([]any{KindServiceHello, ProtocolVersion, c.o.service, names, cred})
	if err != nil {
		return err
	}
	c.send(data)
	return nil
}

func (c *Client) closeSocket(linger time.Duration) {
	for _, f := range c.watchers {
		f.Close() // wakes its watcher, which sees the generation is gone
	}
	c.watchers = c.watchers[:0]
	if c.sock == nil {
		return
	}
	c.sock.SetLinger(linger)
	c.sock.Close()
	c.mon.Close()
	c.sock, c.mon = nil, nil
}

// reconnect replaces the socket (Lazy Pirate): asks that retry are re-sent on the new one,
// the others fail with ErrNodeUnavailable since their replies can no longer arrive.
func (c *Client) reconnect(why string) {
	c.st.reconnects.Add(1)
	c.logf("reconnecting to %s: %s", c.endpoint, why)
	c.closeSocket(0)
	if err := c.openSocket(); err != nil {
		c.logf("reconnect failed: %v", err)
		return
	}
	now := time.Now()
	for corr, p := range c.pending {
		if p.perTry == 0 {
			delete(c.pending, corr)
			p.result <- askResult{err: fmt.Errorf("%w: %s (ask to %s)", ErrNodeUnavailable, why, p.target)}
			continue
		}
		p.tryEnd = now.Add(p.perTry)
		c.send(p.data)
	}
	c.afterSend()
	c.nextCheck = time.Time{}
}

// send sends one message without blocking; what ZeroMQ refuses (its high-water mark) waits in
// c.stuck, and so does everything after it, to keep the order.
func (c *Client) send(data []byte) {
	if c.sock == nil {
		return
	}
	if len(c.stuck) == 0 {
		if _, err := c.sock.SendBytes(data, zmq.DONTWAIT); err == nil {
			return
		}
	}
	c.stuck = append(c.stuck, bytes.Clone(data))
}

// flushStuck sends what the socket refused before.
func (c *Client) flushStuck() {
	if c.sock == nil {
		return
	}
	i := 0
	for ; i < len(c.stuck); i++ {
		if _, err := c.sock.SendBytes(c.stuck[i], zmq.DONTWAIT); err != nil {
			break
		}
	}
	if i > 0 {
		n := copy(c.stuck, c.stuck[i:])
		clear(c.stuck[n:])
		c.stuck = c.stuck[:n]
		c.afterSend()
	}
}

// afterSend looks for messages that arrived meanwhile: sending processes the socket's commands,
// which can use up the FD's edge for them.
func (c *Client) afterSend() {
	if c.sock == nil {
		return
	}
	if ev, err := c.sock.GetEvents(); err == nil && ev&zmq.POLLIN != 0 {
		c.receive()
	}
}

func (c *Client) kickTimer() {
	select {
	case c.timerKick <- struct{}{}:
	default:
	}
}

// timerLoop sends heartbeats, declares a silent node lost and expires tries and asks.
func (c *Client) timerLoop() {
	defer c.bg.Done()
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.closing:
			return
		case <-t.C:
		case <-c.timerKick:
		}
		c.smu.Lock()
		now := time.Now()
		c.flushStuck()
		c.timers(now)
		d := c.nextWake(now)
		if len(c.stuck) > 0 {
			d = min(d, 5*time.Millisecond)
		}
		c.smu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(d)
	}
}

// timers sends heartbeats, declares a silent node lost, and expires tries and asks.
func (c *Client) timers(now time.Time) {
	if c.sock == nil {
		return
	}
	if c.welcomed && now.Sub(c.lastHB) >= c.hbEvery {
		c.hbSeq++
		data, _ := Marshal(Heartbeat{Seq: c.hbSeq, SentTime: float64(now.UnixNano()) / 1e9})
		c.send(data)
		c.afterSend()
		c.lastHB = now
		c.st.heartbeats.Add(1)
	}
	if now.Sub(c.lastHeard) >= c.o.deadAfter {
		c.reconnect(fmt.Sprintf("nothing heard from the bridge for %v", c.o.deadAfter))
		return
	}
	if now.Before(c.nextCheck) {
		return
	}
	next := now.Add(time.Second)
	retry := false
	for corr, p := range c.pending {
		if !now.Before(p.deadline) {
			delete(c.pending, corr)
			p.result <- askResult{err: fmt.Errorf("%w: no reply from %s within the deadline: %w", ErrAskTimeout, p.target, context.DeadlineExceeded)}
			continue
		}
		if !p.tryEnd.IsZero() && !now.Before(p.tryEnd) {
			if p.triesLeft > 0 {
				p.triesLeft--
				retry = true
			} else {
				p.tryEnd = time.Time{} // out of retries: wait for the deadline
			}
		}
		if p.deadline.Before(next) {
			next = p.deadline
		}
		if !p.tryEnd.IsZero() && p.tryEnd.Before(next) {
			next = p.tryEnd
		}
	}
	c.nextCheck = next
	if retry {
		c.reconnect("an ask had no reply within its per-try timeout")
	}
}

func (c *Client) nextWake(now time.Time) time.Duration {
	next := c.lastHeard.Add(c.o.deadAfter)
	if c.welcomed {
		if hb := c.lastHB.Add(c.hbEvery); hb.Before(next) {
			next = hb
		}
	}
	if len(c.pending) > 0 && c.nextCheck.Before(next) {
		next = c.nextCheck
	}
	d := next.Sub(now)
	if d < time.Millisecond {
		return time.Millisecond
	}
	return d
}

func (c *Client) monitorEvents() {
	if c.mon == nil {
		return
	}
	for {
		ev, addr, _, err := c.mon.RecvEvent(zmq.DONTWAIT)
		if err != nil {
			// Reading ZMQ_EVENTS re-arms the FD; POLLIN means an event came meanwhile.
			if st, err := c.mon.GetEvents(); err == nil && st&zmq.POLLIN != 0 {
				continue
			}
			return
		}
		switch {
		case ev&zmq.EVENT_HANDSHAKE_SUCCEEDED != 0:
		case ev&(zmq.EVENT_HANDSHAKE_FAILED_AUTH|zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL|zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0:
			err := &BridgeError{Code: ECodeCurve, Message: fmt.Sprintf("the ZeroMQ handshake with %s failed (%v): wrong CURVE keys, or this client's key is not allowed", addr, ev)}
			if !c.signalDial(err) {
				c.logf("%v", err)
			}
		}
	}
}

// signalDial reports the outcome of the first hello to Dial; false once it was reported.
func (c *Client) signalDial(err error) bool {
	if c.dialDone == nil {
		return false
	}
	c.dialDone <- err
	c.dialDone = nil
	return true
}

// receive drains the socket: every message waiting is handled, then ZMQ_EVENTS is read (which
// re-arms the FD; it may also show that more arrived meanwhile).
func (c *Client) receive() {
	for c.sock != nil {
		b, err := c.sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
			ev, err := c.sock.GetEvents()
			if err == nil && ev&zmq.POLLIN != 0 {
				continue
			}
			if err == nil && ev&zmq.POLLOUT != 0 && len(c.stuck) > 0 {
				c.flushStuck()
			}
			return
		}
		c.lastHeard = time.Now()
		c.st.received.Add(1)
		c.handle(b)
	}
}

func (c *Client) bad(format string, args ...any) {
	c.st.badMessages.Add(1)
	c.logf("bad message from the bridge: "+format, args...)
}

func (c *Client) handle(b []byte) {
	v, err := DecodeBody(b)
	if err != nil {
		c.bad("%v", err)
		return
	}
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 {
		c.bad("not an envelope: %s", describe(v))
		return
	}
	kind, ok := asInt64(arr[0])
	if !ok {
		c.bad("not an envelope: %s", describe(v))
		return
	}
	switch kind {
	case KindWelcome:
		c.onWelcome(arr)
	case KindHeartbeat:
	// Fields past those named are ignored: a later version may append optional ones.
	case KindTell:
		if len(arr) < 4 {
			c.bad("TELL with %d elements", len(arr))
			return
		}
		c.deliver(arr[2], inbound{body: arr[3]})
	case KindTells:
		var bodies []any
		ok := len(arr) >= 4
		if ok {
			bodies, ok = arr[3].([]any)
		}
		if !ok {
			c.bad("TELLS is [15, dest_node, target, [body, ...]], not %s", describe(v))
			return
		}
		for _, body := range bodies {
			c.deliver(arr[2], inbound{body: body})
		}
	case KindAsk:
		if len(arr) < 6 {
			c.bad("ASK with %d elements", len(arr))
			return
		}
		src, _ := arr[4].(string)
		c.deliver(arr[2], inbound{body: arr[3], isAsk: true, dest: src, corr: arr[5]})
	case KindReply:
		if len(arr) < 5 {
			c.bad("REPLY with %d elements", len(arr))
			return
		}
		corr, _ := asInt64(arr[2])
		ok, _ := arr[3].(bool)
		p := c.pending[uint64(corr)]
		if p == nil {
			return // late: the ask timed out or was cancelled
		}
		delete(c.pending, uint64(corr))
		if ok {
			p.result <- askResult{value: arr[4]}
		} else {
			p.result <- askResult{err: remoteError(arr[4])}
		}
	case KindError:
		e, err := ParseError(v)
		if err != nil {
			c.bad("%v", err)
			return
		}
		c.onError(e)
	case KindBye:
		var reason string
		if len(arr) >= 2 {
			reason, _ = arr[1].(string)
		}
		c.welcomed = false
		// Evicted (or the node is leaving): say hello again. A node that is gone will not
		// answer; silence then makes the client reconnect until it is back.
		c.rehello(fmt.Sprintf("the bridge said BYE (%s)", reason))
		for corr, p := range c.pending {
			if p.perTry == 0 {
				delete(c.pending, corr)
				p.result <- askResult{err: fmt.Errorf("%w: the bridge node left (%s)", ErrNodeUnavailable, reason)}
			}
		}
	default:
		c.bad("unexpected %s", KindName(kind))
	}
}

func (c *Client) onWelcome(arr []any) {
	if len(arr) < 4 {
		c.bad("WELCOME with %d elements", len(arr))
		return
	}
	node, _ := arr[1].(string)
	interval, _ := asFloat64(arr[2])
	if limit, ok := asInt64(arr[3]); ok && limit > 64 {
		c.maxFrame.Store(limit)
	}
	c.mu.Lock()
	c.node = node
	c.mu.Unlock()
	c.hbEvery = c.o.heartbeat
	if c.hbEvery == 0 {
		c.hbEvery = time.Duration(interval * float64(time.Second))
		if c.hbEvery <= 0 {
			c.hbEvery = 500 * time.Millisecond
		}
	}
	c.welcomed = true
	c.lastHB = time.Now()
	c.kickTimer()
	c.signalDial(nil)
}

func (c *Client) onError(e ErrorEnvelope) {
	if e.CorrID != nil {
		// An ERROR answering one of our asks (it carries the ask's corr). ERROR "protocol" may
		// also mean the node no longer knows this session ("send SERVICE_HELLO first"): say hello
		// again, and let an ask that has tries left be sent again rather than fail.
		if e.Code == ECodeProtocol {
			c.rehello((&BridgeError{Code: e.Code, Message: e.Message}).Error())
		}
		corr, _ := asInt64(e.CorrID)
		if p := c.pending[uint64(corr)]; p != nil {
			if e.Code == ECodeProtocol && p.triesLeft > 0 {
				return
			}
			delete(c.pending, uint64(corr))
			p.result <- askResult{err: &BridgeError{Code: e.Code, Message: e.Message}}
			return
		}
		c.logf("bridge error %s: %s", e.Code, e.Message)
		return
	}
	err := &BridgeError{Code: e.Code, Message: e.Message}
	if c.signalDial(err) {
		return
	}
	// The node does not know this identity (it restarted, or evicted and forgot us): say hello
	// again. Every message sent before the new WELCOME draws the same ERROR: log it once.
	if e.Code == ECodeProtocol {
		c.rehello(err.Error())
		return
	}
	c.logf("%v", err)
}

// rehello says SERVICE_HELLO again on the same socket, at most once per second.
func (c *Client) rehello(why string) {
	if time.Since(c.lastRehello) < time.Second {
		return
	}
	c.lastRehello = time.Now()
	c.welcomed = false
	c.logf("%s; saying SERVICE_HELLO again", why)
	c.sendHello()
}

// deliver puts a message into its name's mailbox; an ask for an unknown name or a full mailbox
// is answered at once.
func (c *Client) deliver(tgt any, m inbound) {
	name, _ := tgt.(string)
	c.mu.Lock()
	box := c.boxes[name]
	full := false
	if box != nil {
		select {
		case box.ch <- m:
		default:
			full = true
		}
	}
	c.mu.Unlock()
	if box != nil && !full {
		return
	}
	if !m.isAsk {
		c.st.dropped.Add(1)
		return
	}
	typ, msg := TypeActorNotFound, fmt.Sprintf("service %s has no actor %v", c.o.service, tgt)
	if full {
		typ, msg = TypeMailboxFull, fmt.Sprintf("the mailbox of %s is full", name)
	}
	data, _ := Marshal([]any{KindReply, m.dest, m.corr, false, []any{typ, msg}})
	c.send(data)
}

// shutdown ends the session: BYE, fail what is pending, close the socket and the mailboxes.
func (c *Client) shutdown(bye bool) {
	if bye && c.sock != nil {
		c.flushStuck()
		if data, err := Marshal(Bye{Reason: "shutdown"}); err == nil {
			c.send(data)
		}
	}
	for corr, p := range c.pending {
		delete(c.pending, corr)
		p.result <- askResult{err: ErrClosed}
	}
	c.signalDial(ErrClosed)
	linger := time.Duration(0)
	if bye && c.welcomed {
		linger = time.Second // time for the BYE (and queued tells) to leave
	}
	c.closeSocket(linger)
	c.mu.Lock()
	for name, box := range c.boxes {
		close(box.ch)
		delete(c.boxes, name)
	}
	c.mu.Unlock()
}
