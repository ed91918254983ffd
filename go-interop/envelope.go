package herd

import (
	"crypto/rand"
	"fmt"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// Link-level envelopes (PROTOCOL.md (Links); Python: herdrt.herd.protocol). An envelope is a
// msgpack array whose first element is a small non-negative integer, its kind. The types here
// encode themselves explicitly (array header, kind, fields), so the bytes are exactly Python's.

// ProtocolVersion is the version every HELLO carries.
const ProtocolVersion = 4

// Sizes in the handshake (the MAC itself: session.go).
const (
	NonceSize = 16
	MACSize   = 32
	// MaxNodeNameLen is the longest node name a HELLO may carry, in characters (code points).
	MaxNodeNameLen = 64
)

// Envelope kinds.
const (
	KindHello       = 0
	KindAuth        = 1
	KindTell        = 2 // node layer (reserved here)
	KindAsk         = 3 // node layer (reserved here)
	KindError       = 4
	KindHeartbeat   = 5
	KindReply       = 6 // node layer (reserved here)
	KindMembership  = 7 // node layer (reserved here)
	KindFlood       = 8 // node layer (reserved here)
	KindBye         = 9
	KindHandoff     = 10 // node layer (reserved here)
	KindTells       = 15 // node layer: [15, dest_node, target, [body, ...], src_node]
	KindSend        = 16 // node layer: [16, dest_node, target, [body, ...], src_node, window, seq]
	KindCredit      = 17 // node layer: [17, dest_node, window, delivered, limit, error|nil]
	KindDeadLetters = 18 // node layer: [18, dest_node, src_node, [[target, reason, count], ...]]
)

// Error codes (the third element of an ERROR). Receivers must accept codes they do not know.
const (
	ECodeVersion     = "version"
	ECodeUnknownNode = "unknown_node"
	ECodeAuth        = "auth"
	ECodeFrame       = "frame"
	ECodeOverflow    = "overflow"
	ECodeProtocol    = "protocol"
	ECodeTimeout     = "timeout"
	ECodeDuplicate   = "duplicate"
)

var kindNames = map[int64]string{
	KindHello: "HELLO", KindAuth: "AUTH", KindTell: "TELL", KindAsk: "ASK", KindError: "ERROR",
	KindHeartbeat: "HEARTBEAT", KindReply: "REPLY", KindMembership: "MEMBERSHIP", KindFlood: "FLOOD",
	KindBye: "BYE", KindHandoff: "HANDOFF", KindTells: "TELLS", KindSend: "SEND", KindCredit: "CREDIT",
	KindDeadLetters: "DEAD_LETTERS",
}

// KindName is "HELLO" for 0 and so on, "kind 42" for a kind this version does not know.
func KindName(kind int64) string {
	if n, ok := kindNames[kind]; ok {
		return n
	}
	return fmt.Sprintf("kind %d", kind)
}

// ProtocolError says a decoded envelope does not have the shape its kind requires; Code is the
// ERROR code to answer with (Python: herdrt.herd.protocol.ProtocolError).
type ProtocolError struct {
	Code    string
	Message string
}

func (e *ProtocolError) Error() string { return "herd: protocol error: " + e.Message }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Code: ECodeProtocol, Message: fmt.Sprintf(format, args...)}
}

// Envelope is any envelope: the link types of this file, or a NodeEnvelope.
type Envelope interface {
	msgpack.CustomEncoder
	// Kind is the envelope's first element.
	Kind() int64
}

// Hello is [0, version, node_name, nonce(16)]: the first envelope on a link, both ways.
type Hello struct {
	Version  int64
	NodeName string
	Nonce    []byte
}

// Auth is [1, mac(32)]: proof of the shared secret over the peer's nonce.
type Auth struct {
	MAC []byte
}

// ErrorEnvelope is [4, corr_id, code, message]. CorrID is nil on a link-level error (the
// sender then closes the link); otherwise it belongs to the node layer.
type ErrorEnvelope struct {
	CorrID  any
	Code    string
	Message string
}

// Heartbeat is [5, seq, sent_time] or, with HasEcho, [5, seq, sent_time, echo_time, hold].
type Heartbeat struct {
	Seq      int64
	SentTime float64
	HasEcho  bool
	EchoTime float64 // the peer's last sent_time
	Hold     float64 // seconds between receiving it and sending this one
}

// Bye is [9, reason]: the sender is closing the link on purpose.
type Bye struct {
	Reason string
}

// NodeEnvelope is any other envelope (TELL, ASK, ... or a kind this version does not know):
// the kind, then the remaining elements as DecodeBody returns them.
type NodeEnvelope struct {
	K    int64
	Rest []any
}

func (Hello) Kind() int64          { return KindHello }
func (Auth) Kind() int64           { return KindAuth }
func (ErrorEnvelope) Kind() int64  { return KindError }
func (Heartbeat) Kind() int64      { return KindHeartbeat }
func (Bye) Kind() int64            { return KindBye }
func (n NodeEnvelope) Kind() int64 { return n.K }

// EncodeMsgpack writes [0, version, node_name, nonce].
func (h Hello) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeArray(e, int64(KindHello), h.Version, h.NodeName, h.Nonce)
}

// EncodeMsgpack writes [1, mac].
func (a Auth) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeArray(e, int64(KindAuth), a.MAC)
}

// EncodeMsgpack writes [4, corr_id, code, message].
func (x ErrorEnvelope) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeArray(e, int64(KindError), x.CorrID, x.Code, x.Message)
}

// EncodeMsgpack writes [5, seq, sent_time] or [5, seq, sent_time, echo_time, hold].
func (h Heartbeat) EncodeMsgpack(e *msgpack.Encoder) error {
	if h.HasEcho {
		return encodeArray(e, int64(KindHeartbeat), h.Seq, h.SentTime, h.EchoTime, h.Hold)
	}
	return encodeArray(e, int64(KindHeartbeat), h.Seq, h.SentTime)
}

// EncodeMsgpack writes [9, reason].
func (b Bye) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeArray(e, int64(KindBye), b.Reason)
}

// EncodeMsgpack writes [kind, rest...].
func (n NodeEnvelope) EncodeMsgpack(e *msgpack.Encoder) error {
	return encodeArray(e, n.K, n.Rest...)
}

// encodeArray writes an array with every integer in its smallest form (whatever the flags of
// the encoder it is handed), so herd.Marshal(env) and msgpack.Marshal(env) agree.
func encodeArray(e *msgpack.Encoder, kind int64, fields ...any) error {
	if err := e.EncodeArrayLen(1 + len(fields)); err != nil {
		return err
	}
	if err := e.EncodeInt(kind); err != nil {
		return err
	}
	for _, f := range fields {
		var err error
		switch v := f.(type) {
		case int64:
			err = e.EncodeInt(v)
		case int:
			err = e.EncodeInt(int64(v))
		case uint64:
			err = e.EncodeUint(v)
		case float64:
			err = e.EncodeFloat64(v)
		case string:
			err = e.EncodeString(v)
		case []byte:
			err = e.EncodeBytes(v)
		case nil:
			err = e.EncodeNil()
		default:
			// Nested values go through the herd encoder (compact ints, sorted map keys), whatever
			// the flags of e: a plain msgpack.Marshal of an envelope gives Python's bytes too.
			var b []byte
			if b, err = Marshal(v); err == nil {
				_, err = e.Writer().Write(b)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DecodeEnvelope decodes one body (DecodeBody) and parses it (ParseEnvelope). A framing
// problem wraps ErrFrame; a wrong shape is a *ProtocolError.
func DecodeEnvelope(body []byte) (Envelope, error) {
	v, err := DecodeBody(body)
	if err != nil {
		return nil, err
	}
	return ParseEnvelope(v)
}

// ParseEnvelope turns a decoded value into its envelope type: Hello, Auth, ErrorEnvelope,
// Heartbeat or Bye (validated like Python's parse_* functions), or a NodeEnvelope for every
// other integer kind. Anything that is not a non-empty array starting with an integer (within
// int64) is a *ProtocolError.
func ParseEnvelope(v any) (Envelope, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 {
		return nil, protoErr("expected an envelope (a non-empty array starting with an integer kind), got %s", describe(v))
	}
	kind, ok := asInt64(arr[0])
	if !ok {
		return nil, protoErr("an envelope kind must be an integer, not %T", arr[0])
	}
	switch kind {
	case KindHello:
		return ParseHello(v)
	case KindAuth:
		return ParseAuth(v)
	case KindError:
		return ParseError(v)
	case KindHeartbeat:
		return ParseHeartbeat(v)
	case KindBye:
		return ParseBye(v)
	}
	return NodeEnvelope{K: kind, Rest: arr[1:]}, nil
}

func describe(v any) string {
	if arr, ok := v.([]any); ok {
		if len(arr) == 0 {
			return "an empty array"
		}
		if k, ok := asInt64(arr[0]); ok {
			return fmt.Sprintf("%s with %d elements", KindName(k), len(arr))
		}
		return fmt.Sprintf("an array of %d starting with %T", len(arr), arr[0])
	}
	return fmt.Sprintf("a %T", v)
}

// shape checks that v is an array of one of sizes whose first element is the integer kind.
// HELLO and AUTH are exact: use shape for them.
func shape(v any, kind int64, sizes ...int) ([]any, error) {
	arr, ok := v.([]any)
	if ok && len(arr) > 0 {
		if k, isInt := asInt64(arr[0]); isInt && k == kind {
			for _, n := range sizes {
				if len(arr) == n {
					return arr, nil
				}
			}
			return nil, protoErr("%s must have %v elements, not %d", KindName(kind), sizes, len(arr))
		}
	}
	return nil, protoErr("expected a %s envelope, got %s", KindName(kind), describe(v))
}

// shapeAtLeast is shape for the envelopes a later version may extend: at least min elements,
// and the fields past those this version knows are ignored (PROTOCOL.md, Envelopes).
func shapeAtLeast(v any, kind int64, min int) ([]any, error) {
	arr, ok := v.([]any)
	if ok && len(arr) > 0 {
		if k, isInt := asInt64(arr[0]); isInt && k == kind {
			if len(arr) >= min {
				return arr, nil
			}
			return nil, protoErr("%s must have at least %d elements, not %d", KindName(kind), min, len(arr))
		}
	}
	return nil, protoErr("expected a %s envelope, got %s", KindName(kind), describe(v))
}

// ParseHello validates a decoded HELLO: integer version, a node name of 1-64 characters, a
// 16-byte bin nonce.
func ParseHello(v any) (Hello, error) {
	arr, err := shape(v, KindHello, 4)
	if err != nil {
		return Hello{}, err
	}
	version, ok := asInt64(arr[1])
	if !ok {
		return Hello{}, protoErr("HELLO version must be an integer, not %T", arr[1])
	}
	name, ok := arr[2].(string)
	if !ok || name == "" || utf8.RuneCountInString(name) > MaxNodeNameLen {
		return Hello{}, protoErr("HELLO node name must be a string of 1-%d characters", MaxNodeNameLen)
	}
	nonce, ok := arr[3].([]byte)
	if !ok || len(nonce) != NonceSize {
		return Hello{}, protoErr("HELLO nonce must be %d bytes (msgpack bin)", NonceSize)
	}
	return Hello{Version: version, NodeName: name, Nonce: nonce}, nil
}

// ParseAuth validates a decoded AUTH: a 32-byte bin MAC.
func ParseAuth(v any) (Auth, error) {
	arr, err := shape(v, KindAuth, 2)
	if err != nil {
		return Auth{}, err
	}
	mac, ok := arr[1].([]byte)
	if !ok || len(mac) != MACSize {
		return Auth{}, protoErr("AUTH mac must be %d bytes (msgpack bin)", MACSize)
	}
	return Auth{MAC: mac}, nil
}

// ParseError validates a decoded ERROR: any corr_id, string code and message (unknown codes
// pass through; fields past the message are ignored).
func ParseError(v any) (ErrorEnvelope, error) {
	arr, err := shapeAtLeast(v, KindError, 4)
	if err != nil {
		return ErrorEnvelope{}, err
	}
	code, ok1 := arr[2].(string)
	msg, ok2 := arr[3].(string)
	if !ok1 || !ok2 {
		return ErrorEnvelope{}, protoErr("ERROR code and message must be strings")
	}
	return ErrorEnvelope{CorrID: arr[1], Code: code, Message: msg}, nil
}

// ParseHeartbeat validates a decoded HEARTBEAT: an integer seq and numeric times (integers are
// taken as floats, as in Python). It has 3 elements, or 5 (with the echo) or more (fields a
// later version appends, ignored); 4 is neither and refused.
func ParseHeartbeat(v any) (Heartbeat, error) {
	arr, err := shapeAtLeast(v, KindHeartbeat, 3)
	if err != nil {
		return Heartbeat{}, err
	}
	if len(arr) == 4 {
		return Heartbeat{}, protoErr("HEARTBEAT must have 3 or at least 5 elements, not 4")
	}
	seq, ok1 := asInt64(arr[1])
	sent, ok2 := asFloat64(arr[2])
	if !ok1 || !ok2 {
		return Heartbeat{}, protoErr("HEARTBEAT needs an integer seq and a numeric sent_time")
	}
	h := Heartbeat{Seq: seq, SentTime: sent}
	if len(arr) >= 5 {
		echo, ok1 := asFloat64(arr[3])
		hold, ok2 := asFloat64(arr[4])
		if !ok1 || !ok2 {
			return Heartbeat{}, protoErr("HEARTBEAT echo_time and hold must be numbers")
		}
		h.HasEcho, h.EchoTime, h.Hold = true, echo, hold
	}
	return h, nil
}

// ParseBye validates a decoded BYE: a string reason (fields after it are ignored).
func ParseBye(v any) (Bye, error) {
	arr, err := shapeAtLeast(v, KindBye, 2)
	if err != nil {
		return Bye{}, err
	}
	reason, ok := arr[1].(string)
	if !ok {
		return Bye{}, protoErr("BYE reason must be a string")
	}
	return Bye{Reason: reason}, nil
}

// NewNonce returns a fresh random 16-byte nonce for a HELLO.
func NewNonce() ([]byte, error) {
	b := make([]byte, NonceSize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}
