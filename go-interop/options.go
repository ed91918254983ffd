package herd

import (
	"context"
	"fmt"
	"log"
	"time"
)

// Option configures a Client (Dial's functional options).
type Option func(*options) error

// Handler answers the messages sent to one of a service's names. For an ask its result (or
// error) is the reply; for a tell both are dropped (an error is logged). Messages for one name
// are handled one at a time, in arrival order, like an actor's mailbox; different names run
// concurrently.
type Handler func(ctx context.Context, msg any) (any, error)

type options struct {
	service        string
	names          []string
	handlers       map[string]Handler
	secret         []byte
	curve          bool
	serverKey      string
	clientPub      string
	clientSec      string
	heartbeat      time.Duration // 0: the interval WELCOME announces
	deadAfter      time.Duration
	retries        int
	tryTimeout     time.Duration
	askTimeout     time.Duration
	connectTimeout time.Duration
	mailboxSize    int
	sendQueue      int
	logger         *log.Logger
}

func defaultOptions() options {
	return options{
		handlers:       map[string]Handler{},
		deadAfter:      3 * time.Second,
		tryTimeout:     time.Second,
		askTimeout:     5 * time.Second,
		connectTimeout: 5 * time.Second,
		mailboxSize:    1024,
		sendQueue:      4096,
	}
}

// WithService names the service (required). The bridge keys the registration by it: a second
// SERVICE_HELLO with the same name (a reconnect) replaces the first.
func WithService(name string) Option {
	return func(o *options) error {
		if err := checkName(name); err != nil {
			return err
		}
		o.service = name
		return nil
	}
}

// WithNames lists actor names the service takes on the bridge's node, announced in its
// SERVICE_HELLO. Messages for a name that has no Handler yet wait in its mailbox until Handle
// is called, so registering the handler just after Dial loses nothing.
func WithNames(names ...string) Option {
	return func(o *options) error {
		for _, n := range names {
			if err := checkName(n); err != nil {
				return err
			}
			o.names = appendUnique(o.names, n)
		}
		return nil
	}
}

// WithHandler announces name in the SERVICE_HELLO and handles it with h from the start.
func WithHandler(name string, h Handler) Option {
	return func(o *options) error {
		if err := checkName(name); err != nil {
			return err
		}
		if h == nil {
			return fmt.Errorf("herd: nil handler for %q", name)
		}
		o.names = appendUnique(o.names, name)
		o.handlers[name] = h
		return nil
	}
}

// WithSecret gives the herd's shared secret: the SERVICE_HELLO then carries the HMAC credential
// (BridgeCredential). A bridge without CURVE requires it.
func WithSecret(secret []byte) Option {
	return func(o *options) error {
		if len(secret) == 0 {
			return fmt.Errorf("herd: empty secret")
		}
		o.secret = append([]byte(nil), secret...)
		return nil
	}
}

// WithCurve turns on CURVE encryption and authentication (Z85 keys of 40 characters): the
// bridge's public key, and this service's key pair (its public key must be on the bridge's
// allowed list).
func WithCurve(serverPublicKey, clientPublicKey, clientSecretKey string) Option {
	return func(o *options) error {
		for what, k := range map[string]string{"server public": serverPublicKey, "client public": clientPublicKey, "client secret": clientSecretKey} {
			if len(k) != 40 {
				return fmt.Errorf("herd: CURVE %s key must be 40 Z85 characters, not %d", what, len(k))
			}
		}
		o.curve, o.serverKey, o.clientPub, o.clientSec = true, serverPublicKey, clientPublicKey, clientSecretKey
		return nil
	}
}

// WithHeartbeat sets the interval between this service's heartbeats (default: the interval the
// node's WELCOME announces).
func WithHeartbeat(interval time.Duration) Option {
	return func(o *options) error {
		if interval <= 0 {
			return fmt.Errorf("herd: heartbeat interval must be positive")
		}
		o.heartbeat = interval
		return nil
	}
}

// WithDeadAfter sets how long the node may stay silent (no message at all, heartbeats
// included) before the client declares it lost: pending asks fail with ErrNodeUnavailable
// (unless they retry) and the client reconnects and says SERVICE_HELLO again. Default 3 s, the
// bridge's own eviction bound: the node keeps sending heartbeats while it ingests a flood of
// tells, and the client's heartbeats go out on its own timer whatever it is sending.
func WithDeadAfter(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("herd: dead-after must be positive")
		}
		o.deadAfter = d
		return nil
	}
}

// WithRetries opts asks into Lazy Pirate retries: when no reply came within perTry, the client
// closes its DEALER socket, opens a new one, says SERVICE_HELLO again and re-sends the ask, up to
// n times (always within the caller's context deadline). An ask may then be performed more than
// once, so use it only for idempotent asks. Other pending asks that do not retry fail with
// ErrNodeUnavailable when the socket is replaced (their replies can no longer arrive).
func WithRetries(n int, perTry time.Duration) Option {
	return func(o *options) error {
		if n < 0 || perTry <= 0 {
			return fmt.Errorf("herd: retries must be >= 0 and the per-try timeout positive")
		}
		o.retries, o.tryTimeout = n, perTry
		return nil
	}
}

// WithAskTimeout bounds asks whose context has no deadline (default 5 s).
func WithAskTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("herd: ask timeout must be positive")
		}
		o.askTimeout = d
		return nil
	}
}

// WithConnectTimeout bounds Dial when its context has no deadline (default 5 s).
func WithConnectTimeout(d time.Duration) Option {
	return func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("herd: connect timeout must be positive")
		}
		o.connectTimeout = d
		return nil
	}
}

// WithMailboxSize bounds each name's mailbox (default 1024). When it is full, asks are answered
// with MailboxFull and tells are dropped (counted in Stats).
func WithMailboxSize(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("herd: mailbox size must be at least 1")
		}
		o.mailboxSize = n
		return nil
	}
}

// WithLogger sets where the client logs (default: the standard logger).
func WithLogger(l *log.Logger) Option {
	return func(o *options) error {
		o.logger = l
		return nil
	}
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
