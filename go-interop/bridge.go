package herd

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
)

// The ZeroMQ bridge protocol (PROTOCOL.md, Bridge): a service's DEALER talks to a node's ROUTER;
// every ZeroMQ message is one msgpack envelope body. Kinds 11-14 exist only on the bridge; TELL,
// ASK, REPLY, ERROR, HEARTBEAT and BYE are the herd's own envelopes.

// Bridge-only envelope kinds.
const (
	KindServiceHello = 11 // [11, version, service, names, credential|nil]   service -> node
	KindWelcome      = 12 // [12, node, heartbeat_interval, max_frame_size]   node -> service
	KindRegister     = 13 // [13, names]                                      service -> node
	KindUnregister   = 14 // [14, names]                                      service -> node
)

// BridgeAuthContext is the domain-separation prefix of a SERVICE_HELLO credential.
const BridgeAuthContext = "herdrt-bridge-v1"

// Bridge error codes, besides the link codes of envelope.go ("version", "auth", "frame",
// "protocol").
const (
	ECodeNameTaken = "name_taken"
	// ECodeCurve is not sent by the node: the client reports a CURVE handshake the ZeroMQ layer
	// refused (wrong server key, or a client key the bridge does not allow) with this code.
	ECodeCurve = "curve"
)

func init() {
	kindNames[KindServiceHello] = "SERVICE_HELLO"
	kindNames[KindWelcome] = "WELCOME"
	kindNames[KindRegister] = "REGISTER"
	kindNames[KindUnregister] = "UNREGISTER"
}

// BridgeCredential is the SERVICE_HELLO credential that proves the herd secret without CURVE:
// HMAC-SHA256(secret, "herdrt-bridge-v1" || UTF-8(service)). It is the same for every hello of a
// service, so anyone who can read the traffic can replay it: run the bridge with CURVE on any
// network that is not trusted.
func BridgeCredential(secret []byte, service string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(BridgeAuthContext))
	m.Write([]byte(service))
	return m.Sum(nil)
}

// Names of the errors a REPLY carries across the herd (PROTOCOL.md, Tell, ask, reply).
const (
	TypeActorNotFound   = "ActorNotFound"
	TypeActorStopped    = "ActorStopped"
	TypeMailboxFull     = "MailboxFull"
	TypeNodeUnavailable = "NodeUnavailable"
	TypeAskTimeout      = "AskTimeout"
)

// Sentinel errors. An error REPLY comes back as a *RemoteError; errors.Is matches it against the
// sentinel of its type name, so errors.Is(err, ErrNodeUnavailable) holds for a remote
// "NodeUnavailable" as well as for a local failure (the bridge is lost, the client is closed).
var (
	ErrActorNotFound   = errors.New("herd: ActorNotFound")
	ErrActorStopped    = errors.New("herd: ActorStopped")
	ErrMailboxFull     = errors.New("herd: MailboxFull")
	ErrNodeUnavailable = errors.New("herd: NodeUnavailable")
	ErrAskTimeout      = errors.New("herd: AskTimeout")
	// ErrClosed is returned by every call on a closed Client (it wraps ErrNodeUnavailable).
	ErrClosed = fmt.Errorf("%w: client closed", ErrNodeUnavailable)
)

var sentinelByType = map[string]error{
	TypeActorNotFound:   ErrActorNotFound,
	TypeActorStopped:    ErrActorStopped,
	TypeMailboxFull:     ErrMailboxFull,
	TypeNodeUnavailable: ErrNodeUnavailable,
	TypeAskTimeout:      ErrAskTimeout,
}

// RemoteError is an ask that failed on the other side: a REPLY with ok=false and value
// [type_name, message]. Type is one of the Type* names or the type of the error the remote
// handler raised (a Python exception class name such as "ValueError").
//
// A handler may also return a *RemoteError to choose the type name of its error reply.
type RemoteError struct {
	Type    string
	Message string
}

func (e *RemoteError) Error() string { return e.Type + ": " + e.Message }

// Is makes errors.Is(err, ErrActorNotFound) (and the other sentinels) true for a RemoteError of
// that type.
func (e *RemoteError) Is(target error) bool {
	s, ok := sentinelByType[e.Type]
	return ok && s == target
}

// TypeName is the name an error reply carries for this error.
func (e *RemoteError) TypeName() string { return e.Type }

// BridgeError is an ERROR envelope from the bridge (or a CURVE handshake the ZeroMQ layer
// refused, Code "curve"): Dial returns it when the node refuses the SERVICE_HELLO (Code
// "auth", "version", "name_taken", "protocol"), an ask returns it when the node answered the
// ask with an ERROR (e.g. "frame", "overflow").
type BridgeError struct {
	Code    string
	Message string
}

func (e *BridgeError) Error() string {
	return fmt.Sprintf("herd: bridge error %s: %s", e.Code, e.Message)
}

// errorReply turns a handler's error into the [type_name, message] of an error REPLY: the
// TypeName() of an error that has one (a *RemoteError does), the herd's name for the sentinels
// (and AskTimeout for a context deadline), else "Error".
func errorReply(err error) []any {
	var named interface{ TypeName() string }
	if errors.As(err, &named) {
		msg := err.Error()
		var re *RemoteError
		if errors.As(err, &re) {
			msg = re.Message
		}
		return []any{named.TypeName(), msg}
	}
	for name, s := range sentinelByType {
		if errors.Is(err, s) {
			return []any{name, err.Error()}
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return []any{TypeAskTimeout, err.Error()}
	}
	return []any{"Error", err.Error()}
}

// remoteError turns the value of an error REPLY back into an error.
func remoteError(value any) error {
	if pair, ok := value.([]any); ok && len(pair) == 2 {
		t, ok1 := pair[0].(string)
		m, ok2 := pair[1].(string)
		if ok1 && ok2 {
			return &RemoteError{Type: t, Message: m}
		}
	}
	return &RemoteError{Type: "Error", Message: fmt.Sprintf("malformed error reply %v", value)}
}

// SplitTarget splits "name@Node" into ("Node", "name"); a bare "name" gives ("", "name"), which
// the bridge reads as an actor on its own node. The name is split at the last "@".
func SplitTarget(target string) (node, name string, err error) {
	i := strings.LastIndexByte(target, '@')
	if i < 0 {
		node, name = "", target
	} else {
		node, name = target[i+1:], target[:i]
	}
	if name == "" || (i >= 0 && node == "") {
		return "", "", fmt.Errorf("herd: bad target %q: use NAME or NAME@NODE", target)
	}
	return node, name, nil
}

// checkName validates an actor name a service registers (1-64 characters, no "@").
func checkName(name string) error {
	if name == "" || len([]rune(name)) > MaxNodeNameLen || strings.ContainsRune(name, '@') {
		return fmt.Errorf("herd: bad actor name %q: 1-%d characters, no '@'", name, MaxNodeNameLen)
	}
	return nil
}
