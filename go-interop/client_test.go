package herd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	zmq "github.com/pebbe/zmq4"
)

// The client against fakeBridge: a Go ROUTER playing the node's side of PROTOCOL.md (Bridge).

const testSecret = "correct horse battery"

var curveAuthOnce sync.Once

func TestMain(m *testing.M) {
	code := m.Run()
	if curveAuthStarted.Load() {
		zmq.AuthStop()
	}
	os.Exit(code)
}

var curveAuthStarted atomic.Bool

type received struct {
	identity string
	env      []any
	size     int // bytes of the body
}

// fakeBridge owns a ROUTER on one goroutine. It answers SERVICE_HELLO (checking version and
// credential), answers asks by target ("echo" echoes, "fail" raises ValueError, "gone" is
// NodeUnavailable, "slow" never answers), records every envelope, and sends what the test
// queues.
type fakeBridge struct {
	t        *testing.T
	endpoint string
	out      chan [2][]byte
	in       chan received
	stop     chan struct{}
	stopped  chan struct{}

	maxFrame   int          // announced in WELCOME (DefaultMaxFrameSize when 0); set before dial
	heartbeats atomic.Bool  // send a HEARTBEAT to every service every 20 ms
	dropAsks   atomic.Int32 // drop the next N asks
	forget     atomic.Bool  // answer the next message with ERROR "protocol" (a node that forgot us)

	mu         sync.Mutex
	identities map[string]string // service -> latest identity
}

type bridgeConfig struct {
	curveSecret  string   // Z85 server secret key: CURVE on
	allowedKeys  []string // client public keys allowed by ZAP
	requireCreds bool
}

func newFakeBridge(t *testing.T, cfg bridgeConfig) *fakeBridge {
	t.Helper()
	sock, err := zmq.NewSocket(zmq.ROUTER) // the default context: the ZAP handler of AuthStart lives there
	if err != nil {
		t.Fatal(err)
	}
	sock.SetLinger(0)
	if cfg.curveSecret != "" {
		curveAuthOnce.Do(func() {
			if err := zmq.AuthStart(); err != nil {
				t.Fatal(err)
			}
			curveAuthStarted.Store(true)
		})
		domain := fmt.Sprintf("herd-test-%p", sock)
		zmq.AuthCurveAdd(domain, cfg.allowedKeys...)
		if err := sock.ServerAuthCurve(domain, cfg.curveSecret); err != nil {
			t.Fatal(err)
		}
	}
	if err := sock.Bind("tcp://127.0.0.1:*"); err != nil {
		t.Fatal(err)
	}
	ep, _ := sock.GetLastEndpoint()
	b := &fakeBridge{
		t: t, endpoint: ep, out: make(chan [2][]byte, 1024), in: make(chan received, 65536),
		stop: make(chan struct{}), stopped: make(chan struct{}), identities: map[string]string{},
	}
	go b.run(sock, cfg)
	t.Cleanup(b.close)
	return b
}

func (b *fakeBridge) close() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.stopped
}

func (b *fakeBridge) run(sock *zmq.Socket, cfg bridgeConfig) {
	defer close(b.stopped)
	defer sock.Close()
	lastHB := time.Now()
	seq := int64(0)
	for {
		select {
		case <-b.stop:
			return
		case m := <-b.out:
			sock.SendMessage(m[0], m[1])
			continue
		default:
		}
		if b.heartbeats.Load() && time.Since(lastHB) > 20*time.Millisecond {
			lastHB = time.Now()
			seq++
			b.mu.Lock()
			for _, id := range b.identities {
				hb, _ := Marshal(Heartbeat{Seq: seq, SentTime: 1.5})
				sock.SendMessage(id, hb)
			}
			b.mu.Unlock()
		}
		frames, err := sock.RecvMessageBytes(zmq.DONTWAIT)
		if err != nil {
			time.Sleep(time.Millisecond)
			continue
		}
		if len(frames) != 2 {
			b.t.Errorf("fake bridge: %d frames", len(frames))
			continue
		}
		id, body := string(frames[0]), frames[1]
		v, err := DecodeBody(body)
		if err != nil {
			b.t.Errorf("fake bridge: undecodable body %x: %v", body, err)
			continue
		}
		env := v.([]any)
		b.in <- received{identity: id, env: env, size: len(body)}
		if b.forget.CompareAndSwap(true, false) {
			b.send(id, []any{KindError, nil, ECodeProtocol, "send SERVICE_HELLO first"})
			continue
		}
		kind, _ := asInt64(env[0])
		switch kind {
		case KindServiceHello:
			b.hello(id, env, cfg)
		case KindAsk:
			b.ask(id, env)
		}
	}
}

func (b *fakeBridge) send(id string, env []any) {
	data, err := Marshal(env)
	if err != nil {
		b.t.Errorf("fake bridge: %v", err)
		return
	}
	b.out <- [2][]byte{[]byte(id), data}
}

func (b *fakeBridge) hello(id string, env []any, cfg bridgeConfig) {
	service, _ := env[2].(string)
	if v, _ := asInt64(env[1]); v != ProtocolVersion {
		b.send(id, []any{KindError, nil, ECodeVersion, "version"})
		return
	}
	if cfg.requireCreds {
		cred, _ := env[4].([]byte)
		if !reflect.DeepEqual(cred, BridgeCredential([]byte(testSecret), service)) {
			b.send(id, []any{KindError, nil, ECodeAuth, "bad credential"})
			return
		}
	}
	b.mu.Lock()
	b.identities[service] = id
	b.mu.Unlock()
	maxFrame := b.maxFrame
	if maxFrame == 0 {
		maxFrame = DefaultMaxFrameSize
	}
	b.send(id, []any{KindWelcome, "Bona", 0.05, maxFrame})
}

func (b *fakeBridge) ask(id string, env []any) {
	if b.dropAsks.Load() > 0 {
		b.dropAsks.Add(-1)
		return
	}
	src, corr := env[4], env[5]
	switch env[2] {
	case "echo":
		b.send(id, []any{KindReply, src, corr, true, env[3]})
	case "fail":
		b.send(id, []any{KindReply, src, corr, false, []any{"ValueError", "boom"}})
	case "gone":
		b.send(id, []any{KindReply, src, corr, false, []any{TypeNodeUnavailable, "no route to Clark"}})
	case "slow":
	default:
		b.send(id, []any{KindReply, src, corr, false, []any{TypeActorNotFound, fmt.Sprint(env[2])}})
	}
}

// toService sends env to the latest identity of service.
func (b *fakeBridge) toService(service string, env []any) {
	b.mu.Lock()
	id := b.identities[service]
	b.mu.Unlock()
	b.send(id, env)
}

// expect returns the next recorded envelope of kind (skipping others), failing after 5 s.
func (b *fakeBridge) expect(kind int64) received {
	b.t.Helper()
	return b.expectAny(kind)
}

// expectAny returns the next recorded envelope of one of kinds (skipping others).
func (b *fakeBridge) expectAny(kinds ...int64) received {
	b.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-b.in:
			k, _ := asInt64(r.env[0])
			for _, kind := range kinds {
				if k == kind {
					return r
				}
			}
		case <-timeout:
			b.t.Fatalf("fake bridge: no %v arrived", kinds)
		}
	}
}

func dial(t *testing.T, b *fakeBridge, opts ...Option) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, b.endpoint, append([]Option{WithService("svc"), WithSecret([]byte(testSecret))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ---- wire format -----------------------------------------------------------------------------

func TestBridgeWireBytesMatchPython(t *testing.T) {
	// Expected bytes from msgpack-python (packb(..., use_bin_type=True)) and Python's hmac.
	cred := BridgeCredential([]byte(testSecret), "stats-é")
	if got := hex.EncodeToString(cred); got != "3e6a1fe007a5b83dd28aac70bf4f30a08393e82796f37e541f13ef9dd474d7b9" {
		t.Fatalf("credential %s", got)
	}
	cases := []struct {
		env  []any
		want string
	}{
		{[]any{KindServiceHello, ProtocolVersion, "stats-é", []string{"stats", "mean"}, cred},
			fmt.Sprintf("950b%02xa873746174732dc3a992a57374617473a46d65616ec4203e6a1fe007a5b83dd28aac70bf4f30a08393e82796f37e541f13ef9dd474d7b9", ProtocolVersion)},
		{[]any{KindAsk, nil, "echo", map[string]any{"a": []any{1, 2.5, []byte("x")}}, "svc", uint64(7)},
			"9603c0a46563686f81a1619301cb4004000000000000c40178a373766307"},
		{[]any{KindReply, "Bona", int64(300), false, errorReply(&RemoteError{Type: "ValueError", Message: "boom"})},
			"9506a4426f6e61cd012cc292aa56616c75654572726f72a4626f6f6d"},
	}
	for _, c := range cases {
		got, err := encode(c.env)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(got) != c.want {
			t.Errorf("%v encodes to %x, want %s", c.env, got, c.want)
		}
	}
}

func TestSplitTarget(t *testing.T) {
	for in, want := range map[string][2]string{"echo": {"", "echo"}, "echo@Clark": {"Clark", "echo"}, "a@b@C": {"C", "a@b"}} {
		node, name, err := SplitTarget(in)
		if err != nil || node != want[0] || name != want[1] {
			t.Errorf("SplitTarget(%q) = %q, %q, %v", in, node, name, err)
		}
	}
	for _, bad := range []string{"", "@Clark", "echo@"} {
		if _, _, err := SplitTarget(bad); err == nil {
			t.Errorf("SplitTarget(%q) accepted", bad)
		}
	}
}

func TestErrorReplyTypeNames(t *testing.T) {
	cases := map[error]string{
		&RemoteError{Type: "KeyError", Message: "k"}:  "KeyError",
		fmt.Errorf("wrapped: %w", ErrMailboxFull):     TypeMailboxFull,
		fmt.Errorf("x: %w", context.DeadlineExceeded): TypeAskTimeout,
		errors.New("plain"):                           "Error",
	}
	for err, want := range cases {
		if got := errorReply(err)[0]; got != want {
			t.Errorf("errorReply(%v) type %v, want %s", err, got, want)
		}
	}
	re := remoteError([]any{TypeActorNotFound, "nope"})
	if !errors.Is(re, ErrActorNotFound) || errors.Is(re, ErrNodeUnavailable) {
		t.Errorf("RemoteError.Is wrong for %v", re)
	}
}

func TestOptionsValidate(t *testing.T) {
	bad := []Option{WithService(""), WithService("a@b"), WithNames("x", ""), WithCurve("short", "", ""),
		WithRetries(-1, time.Second), WithRetries(1, 0), WithHeartbeat(0), WithSecret(nil)}
	for i, opt := range bad {
		if _, err := Dial(context.Background(), "tcp://127.0.0.1:1", opt); err == nil {
			t.Errorf("option %d accepted", i)
		}
	}
	if _, err := Dial(context.Background(), "tcp://127.0.0.1:1"); err == nil {
		t.Error("Dial without WithService accepted")
	}
}

// ---- hello, tell, ask ------------------------------------------------------------------------

func TestHelloWelcome(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{requireCreds: true})
	c := dial(t, b, WithNames("a", "b"))
	if c.Node() != "Bona" {
		t.Fatalf("node %q", c.Node())
	}
	hello := b.expect(KindServiceHello).env
	want := []any{int64(KindServiceHello), int64(ProtocolVersion), "svc", []any{"a", "b"}, BridgeCredential([]byte(testSecret), "svc")}
	if !reflect.DeepEqual(hello, want) {
		t.Fatalf("hello %v, want %v", hello, want)
	}
}

func TestHelloRefused(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{requireCreds: true})
	_, err := Dial(ctxFor(t, 5*time.Second), b.endpoint, WithService("svc"), WithSecret([]byte("another secret")))
	var be *BridgeError
	if !errors.As(err, &be) || be.Code != ECodeAuth {
		t.Fatalf("want a BridgeError auth, got %v", err)
	}
}

func TestNoBridgeTimesOut(t *testing.T) {
	ctx := ctxFor(t, 200*time.Millisecond)
	_, err := Dial(ctx, "tcp://127.0.0.1:1", WithService("svc"))
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("got %v", err)
	}
}

func TestTellAndAsk(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	c := dial(t, b)
	if err := c.Tell("sink@Clark", map[string]any{"n": 1}); err != nil {
		t.Fatal(err)
	}
	if err := c.TellKey("counter", "k1", "hi"); err != nil {
		t.Fatal(err)
	}
	tell := b.expect(KindTell).env
	if !reflect.DeepEqual(tell, []any{int64(KindTell), "Clark", "sink", map[string]any{"n": int64(1)}}) {
		t.Fatalf("tell %v", tell)
	}
	tell = b.expect(KindTell).env
	if !reflect.DeepEqual(tell, []any{int64(KindTell), nil, []any{"counter", "k1"}, "hi"}) {
		t.Fatalf("keyed tell %v", tell)
	}
	ctx := ctxFor(t, 5*time.Second)
	msg := map[string]any{"list": []any{int64(1), 2.5, "s", []byte{0, 1}, nil, true}, "big": uint64(1 << 63)}
	got, err := c.Ask(ctx, "echo", msg)
	if err != nil || !reflect.DeepEqual(got, msg) {
		t.Fatalf("echo: %v, %v", got, err)
	}
	_, err = c.Ask(ctx, "fail", 1)
	var re *RemoteError
	if !errors.As(err, &re) || re.Type != "ValueError" || re.Message != "boom" {
		t.Fatalf("fail: %v", err)
	}
	if _, err = c.Ask(ctx, "gone@Clark", 1); !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("gone: %v", err)
	}
	if _, err = c.Ask(ctx, "nobody", 1); !errors.Is(err, ErrActorNotFound) {
		t.Fatalf("nobody: %v", err)
	}
	if _, err = c.AskKey(ctx, "echo", "k", 1); !errors.Is(err, ErrActorNotFound) {
		t.Fatalf("keyed: %v", err)
	}
	if _, err := c.Ask(ctx, "x", func() {}); err == nil {
		t.Fatal("a func was encoded")
	}
	// many concurrent asks each get their own reply
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got, err := c.Ask(ctx, "echo", int64(i))
			if err != nil || got != int64(i) {
				t.Errorf("ask %d: %v, %v", i, got, err)
			}
		}(i)
	}
	wg.Wait()
}

func TestAskDeadline(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	c := dial(t, b)
	_, err := c.Ask(ctxFor(t, 100*time.Millisecond), "slow", 1)
	if !errors.Is(err, ErrAskTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	// the client's own default bounds an ask whose context has no deadline
	c2 := dial(t, b, WithService("svc2"), WithAskTimeout(100*time.Millisecond))
	if _, err := c2.Ask(context.Background(), "slow", 1); !errors.Is(err, ErrAskTimeout) {
		t.Fatalf("got %v", err)
	}
}

// ---- the service side: handlers ---------------------------------------------------------------

func TestHandlersAnswerTheHerd(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	var tells atomic.Int64
	c := dial(t, b, WithHandler("svc-echo", func(ctx context.Context, msg any) (any, error) {
		if s, ok := msg.(string); ok && s == "raise" {
			return nil, &RemoteError{Type: "KeyError", Message: "no such key"}
		}
		if s, ok := msg.(string); ok && s == "panic" {
			panic("oops")
		}
		if s, ok := msg.(string); ok && s == "plain" {
			return nil, errors.New("plain failure")
		}
		if s, ok := msg.(string); ok && s == "tell" {
			tells.Add(1)
			return nil, nil
		}
		return []any{"got", msg}, nil
	}), WithNames("late"))
	b.expect(KindServiceHello)
	ask := func(target string, body any, corr int64) []any {
		b.toService("svc", []any{KindAsk, "Bona", target, body, "Bona", corr})
		r := b.expect(KindReply).env
		if got, _ := asInt64(r[2]); got != corr || r[1] != "Bona" {
			t.Fatalf("reply %v to the wrong ask", r)
		}
		return r
	}
	if r := ask("svc-echo", map[string]any{"x": 1.5}, 1); !reflect.DeepEqual(r[3:], []any{true, []any{"got", map[string]any{"x": 1.5}}}) {
		t.Fatalf("reply %v", r)
	}
	if r := ask("svc-echo", "raise", 2); !reflect.DeepEqual(r[3:], []any{false, []any{"KeyError", "no such key"}}) {
		t.Fatalf("reply %v", r)
	}
	if r := ask("svc-echo", "plain", 3); !reflect.DeepEqual(r[3:], []any{false, []any{"Error", "plain failure"}}) {
		t.Fatalf("reply %v", r)
	}
	if r := ask("svc-echo", "panic", 4); r[3] != false || r[4].([]any)[0] != "panic" {
		t.Fatalf("reply %v", r)
	}
	if r := ask("nobody", 1, 5); r[3] != false || r[4].([]any)[0] != TypeActorNotFound {
		t.Fatalf("reply %v", r)
	}
	// a name announced with WithNames keeps its messages until Handle
	b.toService("svc", []any{KindAsk, "Bona", "late", "early bird", "Bona", int64(6)})
	time.Sleep(20 * time.Millisecond)
	if err := c.Handle("late", func(ctx context.Context, msg any) (any, error) { return msg, nil }); err != nil {
		t.Fatal(err)
	}
	if r := b.expect(KindReply).env; !reflect.DeepEqual(r[3:], []any{true, "early bird"}) {
		t.Fatalf("reply %v", r)
	}
	// a new name is registered; Unhandle gives it back
	if err := c.Handle("more", func(ctx context.Context, msg any) (any, error) { return "more", nil }); err != nil {
		t.Fatal(err)
	}
	if r := b.expect(KindRegister).env; !reflect.DeepEqual(r, []any{int64(KindRegister), []any{"more"}}) {
		t.Fatalf("register %v", r)
	}
	if err := c.Handle("more", func(ctx context.Context, msg any) (any, error) { return nil, nil }); err == nil {
		t.Fatal("a second handler for a name was accepted")
	}
	if err := c.Unhandle("more"); err != nil {
		t.Fatal(err)
	}
	if r := b.expect(KindUnregister).env; !reflect.DeepEqual(r, []any{int64(KindUnregister), []any{"more"}}) {
		t.Fatalf("unregister %v", r)
	}
	// tells run the handler; their order is kept; nothing is answered
	for i := 0; i < 100; i++ {
		b.toService("svc", []any{KindTell, "Bona", "svc-echo", "tell"})
	}
	if r := ask("svc-echo", "after", 7); r[3] != true {
		t.Fatalf("reply %v", r)
	}
	if tells.Load() != 100 {
		t.Fatalf("%d tells handled before the ask that followed them", tells.Load())
	}
}

// ---- liveness: heartbeats, loss, Lazy Pirate --------------------------------------------------

func TestHeartbeats(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	b.heartbeats.Store(true)
	c := dial(t, b, WithHeartbeat(10*time.Millisecond))
	for i := int64(1); i <= 3; i++ {
		hb := b.expect(KindHeartbeat).env
		if seq, _ := asInt64(hb[1]); seq != i {
			t.Fatalf("heartbeat %v, want seq %d", hb, i)
		}
		if _, err := ParseHeartbeat(hb); err != nil {
			t.Fatal(err)
		}
	}
	// the bridge keeps talking: no reconnect
	time.Sleep(100 * time.Millisecond)
	if c.Stats().Reconnects != 0 {
		t.Fatalf("%d reconnects with a live bridge", c.Stats().Reconnects)
	}
}

func TestSilentBridgeIsLostAndRejoined(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{}) // sends no heartbeats
	c := dial(t, b, WithDeadAfter(150*time.Millisecond))
	first := b.expect(KindServiceHello)
	done := make(chan error, 1)
	go func() { _, err := c.Ask(ctxFor(t, 5*time.Second), "slow", 1); done <- err }()
	second := b.expect(KindServiceHello) // a new socket, a new identity, the same service
	if first.identity == second.identity {
		t.Fatal("the client said hello again on the same socket")
	}
	if err := <-done; !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("a pending ask on a lost bridge: %v", err)
	}
}

func TestNodeForgotUs(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	c := dial(t, b)
	b.expect(KindServiceHello)
	b.forget.Store(true)
	c.Tell("x", 1)
	b.expect(KindTell)
	r := b.expect(KindServiceHello) // the answer to ERROR "protocol": hello again
	if r.env[2] != "svc" {
		t.Fatalf("hello %v", r.env)
	}
}

func TestLazyPirateRetry(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	c := dial(t, b, WithRetries(5, 200*time.Millisecond))
	b.dropAsks.Store(2)
	got, err := c.Ask(ctxFor(t, 5*time.Second), "echo", "again")
	if err != nil || got != "again" {
		t.Fatalf("got %v, %v", got, err)
	}
	// two dropped replies, two new sockets (more only if a reply was slower than a try)
	if n := c.Stats().Reconnects; n < 2 {
		t.Fatalf("%d reconnects, want 2", n)
	}
	ids := map[string]bool{}
	for i := 0; i < 3; i++ {
		ids[b.expect(KindServiceHello).identity] = true
	}
	if len(ids) != 3 {
		t.Fatalf("%d identities for 3 sockets", len(ids))
	}
	// out of retries: the ask fails at its deadline, not before
	b.dropAsks.Store(100)
	_, err = c.Ask(ctxFor(t, 1500*time.Millisecond), "echo", "lost")
	if !errors.Is(err, ErrAskTimeout) {
		t.Fatalf("got %v", err)
	}
}

func TestWithoutRetriesNoResend(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	b.heartbeats.Store(true)
	c := dial(t, b)
	b.dropAsks.Store(1)
	if _, err := c.Ask(ctxFor(t, 300*time.Millisecond), "echo", 1); !errors.Is(err, ErrAskTimeout) {
		t.Fatalf("got %v", err)
	}
	if n := c.Stats().Reconnects; n != 0 {
		t.Fatalf("%d reconnects without WithRetries", n)
	}
}

func TestCloseSaysBye(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	c := dial(t, b)
	c.Close()
	if r := b.expect(KindBye).env; r[1] != "shutdown" {
		t.Fatalf("bye %v", r)
	}
	if err := c.Tell("x", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("tell after close: %v", err)
	}
	if _, err := c.Ask(context.Background(), "x", 1); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("ask after close: %v", err)
	}
	c.Close() // twice is fine
}

// ---- CURVE ---------------------------------------------------------------------------------

func TestCurve(t *testing.T) {
	if !zmq.HasCurve() {
		t.Fatal("libzmq has no CURVE")
	}
	serverPub, serverSec, _ := zmq.NewCurveKeypair()
	clientPub, clientSec, _ := zmq.NewCurveKeypair()
	otherPub, otherSec, _ := zmq.NewCurveKeypair()
	b := newFakeBridge(t, bridgeConfig{curveSecret: serverSec, allowedKeys: []string{clientPub}})

	c, err := Dial(ctxFor(t, 5*time.Second), b.endpoint, WithService("svc"), WithCurve(serverPub, clientPub, clientSec))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := c.Ask(ctxFor(t, 5*time.Second), "echo", "secret stuff"); err != nil || got != "secret stuff" {
		t.Fatalf("over CURVE: %v, %v", got, err)
	}

	_, err = Dial(ctxFor(t, 5*time.Second), b.endpoint, WithService("intruder"), WithCurve(serverPub, otherPub, otherSec))
	var be *BridgeError
	if !errors.As(err, &be) || be.Code != ECodeCurve {
		t.Fatalf("a key that is not allowed: %v", err)
	}
	// no CURVE at all against a CURVE bridge: never welcomed
	_, err = Dial(ctxFor(t, 500*time.Millisecond), b.endpoint, WithService("plain"))
	if err == nil {
		t.Fatal("a plain client was welcomed by a CURVE bridge")
	}
}

// ---- TELLS -------------------------------------------------------------------------------------

// The client's hand-assembled TELL/TELLS bytes are the ones Python's encoder gives (the
// "node-tells" golden vector, and a TELL built the same way).
func TestTellsEnvelopeBytes(t *testing.T) {
	v := loadEnvelopes(t)
	var want string
	for _, c := range v.Valid {
		if c.Name == "node-tells" {
			want = c.BodyHex
		}
	}
	if want == "" {
		t.Fatal("no node-tells vector")
	}
	prefix := appendMsgpackStr(appendMsgpackStr(nil, "Bona"), "sink")
	bodies := []any{int64(1), "two", nil, []any{3.5, map[string]any{"k": []byte("v")}}}
	buf := appendTellHead(nil, prefix, len(bodies))
	for _, b := range bodies {
		data, err := encode(b)
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, data...)
	}
	if got := hex.EncodeToString(buf); got != want {
		t.Fatalf("TELLS %s\nwant  %s", got, want)
	}
	one := appendTellHead(nil, append([]byte{0xc0}, appendMsgpackStr(nil, "sink")...), 1)
	one = append(one, 0x07)
	if want, _ := Marshal([]any{KindTell, nil, "sink", 7}); !bytes.Equal(one, want) {
		t.Fatalf("TELL %x, want %x", one, want)
	}
}

// Tells queued while the client is sending leave as TELLS (in order, under the node's
// max_frame_size); a lone tell leaves at once as TELL; TELLS from the node reach the handler
// body by body.
func TestTellsCoalesce(t *testing.T) {
	b := newFakeBridge(t, bridgeConfig{})
	b.maxFrame = 300
	var got []any
	var mu sync.Mutex
	c := dial(t, b, WithHandler("svc-sink", func(ctx context.Context, msg any) (any, error) {
		mu.Lock()
		defer mu.Unlock()
		if msg == "count" {
			return int64(len(got)), nil
		}
		got = append(got, msg)
		return nil, nil
	}))
	b.expect(KindServiceHello)
	if err := c.Tell("sink", "lone"); err != nil {
		t.Fatal(err)
	}
	if r := b.expect(KindTell); !reflect.DeepEqual(r.env, []any{int64(KindTell), nil, "sink", "lone"}) {
		t.Fatalf("lone tell %v", r.env)
	}
	if err := c.Tell("sink", string(make([]byte, 300))); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("a tell over max_frame_size: %v", err)
	}
	const n = 2000
	for i := 0; i < n; i++ {
		if err := c.Tell("sink@Clark", int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	next, batches := int64(0), 0
	for next < n {
		r := b.expectAny(KindTell, KindTells)
		if r.size > 300 {
			t.Fatalf("a message of %d bytes, over the announced max_frame_size 300", r.size)
		}
		if r.env[1] != "Clark" || r.env[2] != "sink" {
			t.Fatalf("tells to the wrong place: %v", r.env)
		}
		bodies := []any{r.env[3]}
		if k, _ := asInt64(r.env[0]); k == KindTells {
			bodies = r.env[3].([]any)
			batches++
		}
		for _, body := range bodies {
			if body != next {
				t.Fatalf("tell %v arrived where %d was due", body, next)
			}
			next++
		}
	}
	if batches == 0 {
		t.Fatalf("%d tells queued back to back never left as TELLS", n)
	}
	if s := c.Stats(); s.TellBatches >= s.TellsSent || s.TellsSent != n+1 {
		t.Fatalf("stats %+v", s)
	}
	// node -> service: TELLS delivers each body, in order, before a later ask
	b.toService("svc", []any{KindTells, "Bona", "svc-sink", []any{"a", int64(2), []any{"c"}}})
	b.toService("svc", []any{KindTell, "Bona", "svc-sink", "d"})
	b.toService("svc", []any{KindAsk, "Bona", "svc-sink", "count", "Bona", int64(9)})
	if r := b.expect(KindReply).env; !reflect.DeepEqual(r[3:], []any{true, int64(4)}) {
		t.Fatalf("reply %v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(got, []any{"a", int64(2), []any{"c"}, "d"}) {
		t.Fatalf("the handler saw %v", got)
	}
}
