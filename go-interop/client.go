package herd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// Client is a Go service in a herd: a ZeroMQ DEALER connected to a node's bridge ROUTER
// (PROTOCOL.md, Bridge). It takes actor names on that node (Handle), and tells and asks any
// actor of the herd (Tell, Ask) through the node.
//
// One goroutine owns the ZeroMQ socket (ZeroMQ sockets are not thread-safe). Every method of
// Client is safe for concurrent use: callers encode their envelope and hand the bytes to that
// goroutine over a channel; when it sleeps in zmq_poll they wake it through an inproc socket.
// Handlers run on one goroutine per name, so a name sees its messages one at a time, in order.
//
// Delivery is at-most-once, as everywhere in the herd: a tell may be lost when the bridge is
// lost; an ask then fails with ErrNodeUnavailable (or is retried, see WithRetries).
type Client struct {
	o        options
	endpoint string
	zctx     *zmq.Context
	id       string // unique per client, for the inproc endpoints

	cmds     chan command
	closing  chan struct{}
	done     chan struct{}
	dialDone chan error
	once     sync.Once
	corr     atomic.Uint64

	wakeMu     sync.Mutex
	wakeTx     *zmq.Socket // guarded by wakeMu
	wakeClosed bool
	sleeping   atomic.Bool

	mu    sync.Mutex // guards boxes, names, node
	boxes map[string]*mailbox
	names []string
	node  string

	runCtx    context.Context
	runCancel context.CancelFunc
	workers   sync.WaitGroup

	st struct {
		tells, asks, replies, received, dropped, badMessages, reconnects, heartbeats atomic.Int64
	}

	// Owned by the socket goroutine.
	sock        *zmq.Socket
	mon         *zmq.Socket
	wakeRx      *zmq.Socket
	poller      *zmq.Poller
	gen         int
	welcomed    bool
	hbEvery     time.Duration
	hbSeq       int64
	lastHB      time.Time
	lastHeard   time.Time
	pending     map[uint64]*pendingAsk
	nextCheck   time.Time
	outq        [][]byte
	lastRehello time.Time
}

type opKind int

const (
	opSend opKind = iota
	opAsk
	opCancel
)

type command struct {
	op   opKind
	data []byte
	ask  *pendingAsk
	corr uint64
}

type askResult struct {
	value any
	err   error
}

type pendingAsk struct {
	corr      uint64
	target    string
	data      []byte
	result    chan askResult // capacity 1: the socket goroutine never blocks on it
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

// Stats are the client's counters.
type Stats struct {
	TellsSent, AsksSent, RepliesSent, Received, Dropped, BadMessages, Reconnects, Heartbeats int64
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
	c := &Client{
		o: o, endpoint: endpoint, zctx: zctx, id: fmt.Sprintf("%d-%p", clientIDs.Add(1), &o),
		cmds: make(chan command, o.sendQueue), closing: make(chan struct{}), done: make(chan struct{}),
		dialDone: make(chan error, 1), boxes: map[string]*mailbox{}, pending: map[uint64]*pendingAsk{},
	}
	c.runCtx, c.runCancel = context.WithCancel(context.Background())
	if err := c.openWake(); err != nil {
		zctx.Term()
		return nil, err
	}
	for _, n := range o.names {
		c.names = append(c.names, n)
		c.boxes[n] = &mailbox{name: n, ch: make(chan inbound, o.mailboxSize)}
	}
	for n, h := range o.handlers {
		c.startWorker(c.boxes[n], h)
	}
	dialDone := c.dialDone // the socket goroutine clears the field once it reported
	go c.run()

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

func (c *Client) openWake() error {
	rx, err := c.zctx.NewSocket(zmq.PAIR)
	if err != nil {
		return err
	}
	addr := "inproc://herd-wake-" + c.id
	if err = rx.Bind(addr); err == nil {
		var tx *zmq.Socket
		if tx, err = c.zctx.NewSocket(zmq.PAIR); err == nil {
			if err = tx.Connect(addr); err == nil {
				c.wakeRx, c.wakeTx = rx, tx
				return nil
			}
			tx.Close()
		}
	}
	rx.Close()
	return fmt.Errorf("herd: wake socket: %w", err)
}

// wake rouses the socket goroutine if it sleeps in zmq_poll (only then: the flag makes the
// common case, a busy loop, cost one atomic operation).
func (c *Client) wake() {
	if !c.sleeping.CompareAndSwap(true, false) {
		return
	}
	c.wakeMu.Lock()
	if !c.wakeClosed {
		c.wakeTx.SendBytes([]byte{0}, zmq.DONTWAIT) // a full pipe means a wake-up is pending anyway
	}
	c.wakeMu.Unlock()
}

func (c *Client) enqueue(cmd command) error {
	select { // closed wins over a free slot (select would pick at random)
	case <-c.closing:
		return ErrClosed
	default:
	}
	select {
	case c.cmds <- cmd:
		c.wake()
		return nil
	case <-c.closing:
		return ErrClosed
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
		Reconnects: c.st.reconnects.Load(), Heartbeats: c.st.heartbeats.Load(),
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
	return c.enqueue(command{op: opSend, data: data})
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
	return c.enqueue(command{op: opSend, data: data})
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
		if err != nil { // the handler's result cannot be sent: say so instead
			err = &RemoteError{Type: "TypeError", Message: fmt.Sprintf("reply cannot be encoded: %v", err)}
		}
	}
	if err != nil {
		data, _ = Marshal([]any{KindReply, dest, corr, false, errorReply(err)})
	}
	if c.enqueue(command{op: opSend, data: data}) == nil {
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

// encode marshals an envelope into a slice of its own (the bytes travel to the socket
// goroutine), reusing encoder buffers.
func encode(env []any) ([]byte, error) {
	buf := encPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer encPool.Put(buf)
	if err := newEncoder(buf).Encode(env); err != nil {
		return nil, fmt.Errorf("herd: message cannot be encoded: %w", err)
	}
	return bytes.Clone(buf.Bytes()), nil
}

// Tell sends msg to target ("name" on the bridge's node, or "name@Node") without waiting for
// anything. It blocks only while the client's send queue is full (backpressure).
func (c *Client) Tell(target string, msg any) error {
	dest, tgt, err := targetFields(target)
	if err != nil {
		return err
	}
	return c.tell(dest, tgt, msg)
}

// TellKey tells the keyed actor (kind, key), wherever the herd's ring places it.
func (c *Client) TellKey(kind, key string, msg any) error {
	return c.tell(nil, []any{kind, key}, msg)
}

func (c *Client) tell(dest, tgt any, msg any) error {
	data, err := encode([]any{KindTell, dest, tgt, msg})
	if err != nil {
		return err
	}
	if err := c.enqueue(command{op: opSend, data: data}); err != nil {
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
	p := &pendingAsk{corr: corr, target: name, data: data, result: make(chan askResult, 1), deadline: deadline}
	if c.o.retries > 0 {
		p.triesLeft, p.perTry = c.o.retries, c.o.tryTimeout
	}
	if err := c.enqueue(command{op: opAsk, ask: p}); err != nil {
		return nil, err
	}
	c.st.asks.Add(1)
	select {
	case r := <-p.result:
		return r.value, r.err
	case <-ctx.Done():
		c.enqueue(command{op: opCancel, corr: corr})
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
		close(c.closing)
		c.sleeping.Store(true)
		c.wake()
		<-c.done
		c.runCancel()
		c.workers.Wait()
		c.wakeMu.Lock()
		c.wakeClosed = true
		c.wakeTx.Close()
		c.wakeMu.Unlock()
		c.zctx.Term()
	})
	return nil
}

// ---- the socket goroutine -------------------------------------------------------------------

func (c *Client) logf(format string, args ...any) {
	c.o.logger.Printf("herd: service %s: "+format, append([]any{c.o.service}, args...)...)
}

func (c *Client) run() {
	runtime.LockOSThread() // the sockets stay on one OS thread
	defer runtime.UnlockOSThread()
	defer close(c.done)
	if err := c.openSocket(); err != nil {
		c.dialDone <- fmt.Errorf("herd: connect %s: %w", c.endpoint, err)
		c.shutdown(false)
		return
	}
	for {
		c.flush()
		if len(c.outq) == 0 {
			c.drain()
		}
		select {
		case <-c.closing:
			c.shutdown(true)
			return
		default:
		}
		now := time.Now()
		c.timers(now)
		timeout := c.nextWake(now)
		if len(c.outq) > 0 {
			c.poller.UpdateBySocket(c.sock, zmq.POLLIN|zmq.POLLOUT)
			timeout = min(timeout, 50*time.Millisecond)
		} else {
			c.poller.UpdateBySocket(c.sock, zmq.POLLIN)
		}
		if timeout > 0 {
			c.sleeping.Store(true)
			if len(c.cmds) > 0 {
				timeout = 0
			}
		}
		polled, err := c.poller.Poll(timeout)
		c.sleeping.Store(false)
		if err != nil {
			if zmq.AsErrno(err) == zmq.ETERM {
				return
			}
			continue // EINTR
		}
		for _, p := range polled {
			switch p.Socket {
			case c.sock:
				if p.Events&zmq.POLLIN != 0 {
					c.receive()
				}
			case c.wakeRx:
				for {
					if _, err := c.wakeRx.RecvBytes(zmq.DONTWAIT); err != nil {
						break
					}
				}
			case c.mon:
				c.monitorEvents()
			}
		}
	}
}

// openSocket opens a DEALER (with its monitor) and sends SERVICE_HELLO on it first.
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
	// Deep queues: bursts of tells should not stall on the default 1000-message HWM.
	s.SetSndhwm(200000)
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
	c.poller = zmq.NewPoller()
	c.poller.Add(c.sock, zmq.POLLIN)
	c.poller.Add(c.wakeRx, zmq.POLLIN)
	c.poller.Add(c.mon, zmq.POLLIN)
	c.welcomed = false
	c.outq = c.outq[:0]
	c.lastHeard = time.Now()
	return c.sendHello()
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
	c.nextCheck = time.Time{}
}

func (c *Client) send(data []byte) {
	if len(c.outq) == 0 {
		if _, err := c.sock.SendBytes(data, zmq.DONTWAIT); err == nil {
			return
		}
	}
	c.outq = append(c.outq, data)
}

// flush sends what the socket refused before (its HWM was reached).
func (c *Client) flush() {
	i := 0
	for ; i < len(c.outq); i++ {
		if _, err := c.sock.SendBytes(c.outq[i], zmq.DONTWAIT); err != nil {
			break
		}
	}
	if i > 0 {
		n := copy(c.outq, c.outq[i:])
		clear(c.outq[n:])
		c.outq = c.outq[:n]
	}
}

// drain takes the commands queued by other goroutines, without blocking.
func (c *Client) drain() {
	for i := 0; i < 4096; i++ {
		select {
		case cmd := <-c.cmds:
			c.do(cmd)
		default:
			return
		}
	}
}

func (c *Client) do(cmd command) {
	switch cmd.op {
	case opSend:
		c.send(cmd.data)
	case opAsk:
		p := cmd.ask
		if p.perTry > 0 {
			p.tryEnd = time.Now().Add(p.perTry)
		}
		c.pending[p.corr] = p
		c.nextCheck = time.Time{}
		c.send(p.data)
	case opCancel:
		delete(c.pending, cmd.corr)
	}
}

// timers sends heartbeats, declares a silent node lost, and expires tries and asks.
func (c *Client) timers(now time.Time) {
	if c.welcomed && now.Sub(c.lastHB) >= c.hbEvery {
		c.hbSeq++
		data, _ := Marshal(Heartbeat{Seq: c.hbSeq, SentTime: float64(now.UnixNano()) / 1e9})
		c.send(data)
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
	if d < 0 {
		return 0
	}
	return d + time.Millisecond // zmq_poll rounds down to milliseconds
}

func (c *Client) monitorEvents() {
	for {
		ev, addr, _, err := c.mon.RecvEvent(zmq.DONTWAIT)
		if err != nil {
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

func (c *Client) receive() {
	for i := 0; i < 4096; i++ {
		b, err := c.sock.RecvBytes(zmq.DONTWAIT)
		if err != nil {
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
	case KindTell:
		if len(arr) != 4 {
			c.bad("TELL with %d elements", len(arr))
			return
		}
		c.deliver(arr[2], inbound{body: arr[3]})
	case KindAsk:
		if len(arr) != 6 {
			c.bad("ASK with %d elements", len(arr))
			return
		}
		src, _ := arr[4].(string)
		c.deliver(arr[2], inbound{body: arr[3], isAsk: true, dest: src, corr: arr[5]})
	case KindReply:
		if len(arr) != 5 {
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
		reason, _ := arr[len(arr)-1].(string)
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
	c.signalDial(nil)
}

func (c *Client) onError(e ErrorEnvelope) {
	if e.CorrID != nil {
		corr, _ := asInt64(e.CorrID)
		if p := c.pending[uint64(corr)]; p != nil {
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

// shutdown ends the socket goroutine: BYE, fail what is pending, close the sockets.
func (c *Client) shutdown(bye bool) {
	if bye && c.sock != nil {
		c.drain()
		c.flush()
		if data, err := Marshal(Bye{Reason: "shutdown"}); err == nil {
			c.sock.SendBytes(data, zmq.DONTWAIT)
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
	c.wakeRx.Close()
	c.mu.Lock()
	for name, box := range c.boxes {
		close(box.ch)
		delete(c.boxes, name)
	}
	c.mu.Unlock()
}
