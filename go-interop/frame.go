package herd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// Framing (PROTOCOL.md (Framing)): a frame is a 4-byte big-endian body length, then exactly
// one msgpack value. A ZeroMQ message carries the body alone.

const (
	// DefaultMaxFrameSize is the default limit on a frame's body (1 MiB), as in Python.
	DefaultMaxFrameSize = 1 << 20
	// HandshakeMaxFrameSize is the body limit before the peer's AUTH verifies.
	HandshakeMaxFrameSize = 4096
	// MaxFrameLength is the largest length a 4-byte header can state.
	MaxFrameLength = math.MaxUint32
	// MaxNesting is the deepest nesting of arrays and maps a body may have (msgpack-python's
	// unpacker accepts 1024 nested containers and refuses 1025).
	MaxNesting = 1024
)

var (
	// ErrFrame is wrapped by every framing error: the connection cannot resynchronise and must
	// be closed (ERROR "frame" first when possible).
	ErrFrame = errors.New("herd: framing error")
	// ErrFrameTooLarge is wrapped when a length prefix is over the limit; it wraps ErrFrame.
	ErrFrameTooLarge = fmt.Errorf("%w: frame too large", ErrFrame)
)

// Ext is a msgpack extension value (type and raw data). The herd protocol uses none; it is
// decoded (ext -1, a msgpack timestamp, too) so that a body carrying one round-trips.
type Ext struct {
	Type int8
	Data []byte
}

var _ msgpack.CustomEncoder = Ext{}

// EncodeMsgpack writes the extension in the smallest form, as msgpack-python does.
func (x Ext) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeExtHeader(x.Type, len(x.Data)); err != nil {
		return err
	}
	_, err := e.Writer().Write(x.Data)
	return err
}

// newEncoder returns an encoder whose output matches msgpack-python's packb(use_bin_type=True)
// byte for byte: integers in their smallest form (positive ones unsigned), float64 as float64,
// string as str, []byte as bin. Map keys are sorted, so a Go map encodes like a Python dict
// built in sorted key order (Python keeps insertion order; Go maps have none).
func newEncoder(w io.Writer) *msgpack.Encoder {
	enc := msgpack.NewEncoder(w)
	enc.UseCompactInts(true)
	enc.SetSortMapKeys(true)
	return enc
}

// Marshal encodes v as one msgpack body with the herd conventions (see newEncoder). Values
// decoded by DecodeBody re-encode to the bytes they came from when the body used the smallest
// forms (as Python's encoder does) and its maps were in sorted key order.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	if err := newEncoder(&buf).Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// AppendFrame appends the frame of v (header and body) to dst.
func AppendFrame(dst []byte, v any) ([]byte, error) {
	start := len(dst)
	buf := bytes.NewBuffer(append(dst, 0, 0, 0, 0))
	if err := newEncoder(buf).Encode(v); err != nil {
		return dst, err
	}
	out := buf.Bytes()
	n := len(out) - start - 4
	if int64(n) > MaxFrameLength {
		return dst, fmt.Errorf("%w: message encodes to %d bytes; a frame holds at most %d", ErrFrameTooLarge, n, uint32(MaxFrameLength))
	}
	binary.BigEndian.PutUint32(out[start:], uint32(n))
	return out, nil
}

// EncodeFrame encodes v as one frame: 4-byte big-endian body length, then the msgpack body.
func EncodeFrame(v any) ([]byte, error) { return AppendFrame(nil, v) }

// EncodeFrames encodes a batch of messages into one buffer of consecutive frames (one write).
func EncodeFrames(vs ...any) ([]byte, error) {
	var out []byte
	var err error
	for _, v := range vs {
		if out, err = AppendFrame(out, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DecodeBody decodes one msgpack body as Python's decoder does (raw=False, strict_map_key):
// nil, bool, int64 (uint64 only above MaxInt64), float64 (float32 widened), string (str),
// []byte (bin), []any, map[string]any (keys str or bin) and Ext. It refuses — with an error
// wrapping ErrFrame — invalid msgpack, trailing bytes, invalid UTF-8 in a str, other map keys,
// lengths the body cannot hold and nesting deeper than MaxNesting. Nothing is allocated for a
// length before the bytes behind it are known to be there.
func DecodeBody(body []byte) (any, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: empty frame body", ErrFrame)
	}
	r := reader{buf: body}
	v, err := r.value(0, false)
	if err != nil {
		return nil, fmt.Errorf("%w: frame body of %d bytes is not valid msgpack: %v", ErrFrame, len(body), err)
	}
	if r.pos != len(body) {
		return nil, fmt.Errorf("%w: frame body of %d bytes holds one message and %d trailing bytes", ErrFrame, len(body), len(body)-r.pos)
	}
	return v, nil
}

// Unmarshal validates body as DecodeBody does, then decodes it into v with vmihailenco/msgpack
// (for typed structs, e.g. `msgpack:",as_array"` ones or the envelope types of this package).
func Unmarshal(body []byte, v any) error {
	if _, err := DecodeBody(body); err != nil {
		return err
	}
	return msgpack.Unmarshal(body, v)
}

type reader struct {
	buf []byte
	pos int
}

var errShort = errors.New("truncated (a length or value runs past the end of the body)")

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.buf)-r.pos {
		return nil, errShort
	}
	b := r.buf[r.pos : r.pos+n]
	r.pos += n
	return b, nil
}

func (r *reader) uint(size int) (uint64, error) {
	b, err := r.take(size)
	if err != nil {
		return 0, err
	}
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v, nil
}

// length reads a size-byte big-endian length and checks that at least length*minEach bytes
// remain (each element of a container takes at least one byte).
func (r *reader) length(size, minEach int) (int, error) {
	n, err := r.uint(size)
	if err != nil {
		return 0, err
	}
	if n > uint64(len(r.buf)-r.pos)/uint64(minEach) {
		return 0, fmt.Errorf("a length of %d is more than the %d remaining bytes could hold", n, len(r.buf)-r.pos)
	}
	return int(n), nil
}

func (r *reader) value(depth int, mapKey bool) (any, error) {
	cb, err := r.take(1)
	if err != nil {
		return nil, err
	}
	c := cb[0]
	if mapKey && !(c >= 0xa0 && c <= 0xbf) && !(c >= 0xc4 && c <= 0xc6) && !(c >= 0xd9 && c <= 0xdb) {
		return nil, fmt.Errorf("map key of type 0x%02x is not str or bin", c)
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	case c >= 0x80 && c <= 0x8f:
		return r.mapOf(int(c&0x0f), depth)
	case c >= 0x90 && c <= 0x9f:
		return r.arrayOf(int(c&0x0f), depth)
	case c >= 0xa0 && c <= 0xbf:
		return r.str(int(c & 0x1f))
	}
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := r.length(1<<(c-0xc4), 1)
		if err != nil {
			return nil, err
		}
		b, _ := r.take(n)
		return bytes.Clone(b), nil
	case 0xc7, 0xc8, 0xc9:
		n, err := r.length(1<<(c-0xc7), 1)
		if err != nil {
			return nil, err
		}
		return r.ext(n)
	case 0xca:
		u, err := r.uint(4)
		return float64(math.Float32frombits(uint32(u))), err
	case 0xcb:
		u, err := r.uint(8)
		return math.Float64frombits(u), err
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, err := r.uint(1 << (c - 0xcc))
		if err != nil {
			return nil, err
		}
		if u > math.MaxInt64 {
			return u, nil
		}
		return int64(u), nil
	case 0xd0, 0xd1, 0xd2, 0xd3:
		size := 1 << (c - 0xd0)
		u, err := r.uint(size)
		if err != nil {
			return nil, err
		}
		shift := uint(64 - 8*size) // sign-extend
		return int64(u<<shift) >> shift, nil
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		return r.ext(1 << (c - 0xd4))
	case 0xd9, 0xda, 0xdb:
		n, err := r.length(1<<(c-0xd9), 1)
		if err != nil {
			return nil, err
		}
		return r.str(n)
	case 0xdc, 0xdd:
		n, err := r.length(2<<(c-0xdc), 1)
		if err != nil {
			return nil, err
		}
		return r.arrayOf(n, depth)
	case 0xde, 0xdf:
		n, err := r.length(2<<(c-0xde), 2)
		if err != nil {
			return nil, err
		}
		return r.mapOf(n, depth)
	}
	return nil, fmt.Errorf("0x%02x is not a msgpack type", c) // 0xc1, never used
}

func (r *reader) str(n int) (any, error) {
	b, err := r.take(n)
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(b) {
		return nil, errors.New("a str is not valid UTF-8")
	}
	return string(b), nil
}

func (r *reader) ext(n int) (any, error) {
	t, err := r.take(1)
	if err != nil {
		return nil, err
	}
	data, err := r.take(n)
	if err != nil {
		return nil, err
	}
	if int8(t[0]) == -1 && n != 4 && n != 8 && n != 12 {
		return nil, fmt.Errorf("a timestamp (ext -1) of %d bytes; it must have 4, 8 or 12", n)
	}
	return Ext{Type: int8(t[0]), Data: bytes.Clone(data)}, nil
}

func (r *reader) arrayOf(n, depth int) (any, error) {
	if depth >= MaxNesting {
		return nil, fmt.Errorf("nested deeper than %d arrays and maps", MaxNesting)
	}
	if n > len(r.buf)-r.pos {
		return nil, errShort
	}
	out := make([]any, n)
	for i := range out {
		v, err := r.value(depth+1, false)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (r *reader) mapOf(n, depth int) (any, error) {
	if depth >= MaxNesting {
		return nil, fmt.Errorf("nested deeper than %d arrays and maps", MaxNesting)
	}
	if n > (len(r.buf)-r.pos)/2 {
		return nil, errShort
	}
	out := make(map[string]any, n)
	for i := 0; i < n; i++ {
		k, err := r.value(depth+1, true)
		if err != nil {
			return nil, err
		}
		v, err := r.value(depth+1, false)
		if err != nil {
			return nil, err
		}
		switch key := k.(type) {
		case string:
			out[key] = v
		case []byte: // a bin key: Go's map keeps it as a string (Python keeps bytes)
			out[string(key)] = v
		}
	}
	return out, nil
}

// FrameDecoder is a streaming decoder of frames, the twin of Python's FrameDecoder: Feed
// returns every message completed by the data (possibly none) and keeps a partial frame for the
// next call, however the stream is split. A length over MaxFrameSize fails from the header
// alone. After an error the messages completed earlier in the same call are still returned,
// and the decoder refuses all further input. Close reports a stream that ended inside a frame.
type FrameDecoder struct {
	max    int
	buf    []byte
	failed error
}

// NewFrameDecoder returns a decoder with the given body limit (0 means DefaultMaxFrameSize).
func NewFrameDecoder(maxFrameSize int) (*FrameDecoder, error) {
	if maxFrameSize == 0 {
		maxFrameSize = DefaultMaxFrameSize
	}
	if maxFrameSize < 0 || int64(maxFrameSize) > MaxFrameLength {
		return nil, fmt.Errorf("herd: max frame size must be between 1 and %d, not %d", uint32(MaxFrameLength), maxFrameSize)
	}
	return &FrameDecoder{max: maxFrameSize}, nil
}

// MaxFrameSize is the largest body accepted, in bytes.
func (d *FrameDecoder) MaxFrameSize() int { return d.max }

// Buffered is the number of bytes held back: the start of a frame not yet complete.
func (d *FrameDecoder) Buffered() int { return len(d.buf) }

// Feed adds bytes from the stream and returns the messages they complete, in order.
func (d *FrameDecoder) Feed(data []byte) ([]any, error) {
	if d.failed != nil {
		return nil, fmt.Errorf("%w: decoder refuses input after an earlier error: %v", ErrFrame, d.failed)
	}
	d.buf = append(d.buf, data...)
	var out []any
	pos := 0
	for len(d.buf)-pos >= 4 {
		length := binary.BigEndian.Uint32(d.buf[pos:])
		if uint64(length) > uint64(d.max) {
			return out, d.fail(fmt.Errorf("%w: frame length %d is over the limit of %d bytes", ErrFrameTooLarge, length, d.max))
		}
		end := pos + 4 + int(length)
		if end > len(d.buf) {
			break
		}
		v, err := DecodeBody(d.buf[pos+4 : end])
		if err != nil {
			return out, d.fail(err)
		}
		out = append(out, v)
		pos = end
	}
	d.buf = append(d.buf[:0], d.buf[pos:]...)
	return out, nil
}

func (d *FrameDecoder) fail(err error) error {
	d.failed = err
	d.buf = nil
	return err
}

// Close ends the stream: an error if it stopped inside a frame.
func (d *FrameDecoder) Close() error {
	if d.failed != nil {
		return nil
	}
	if len(d.buf) > 0 {
		err := fmt.Errorf("%w: stream ended inside a frame (%d bytes buffered)", ErrFrame, len(d.buf))
		d.fail(err)
		return err
	}
	d.failed = errors.New("decoder is closed")
	return nil
}

// ReadFrame reads one frame from r and returns its body (not decoded), refusing a length over
// maxFrameSize from the header alone. io.EOF means the stream ended cleanly between frames;
// a stream that ends inside a frame is an error wrapping ErrFrame.
func ReadFrame(r io.Reader, maxFrameSize int) ([]byte, error) {
	var hdr [4]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: stream ended inside a frame header (%d bytes)", ErrFrame, n)
		}
		return nil, err
	}
	length := binary.BigEndian.Uint32(hdr[:])
	if uint64(length) > uint64(maxFrameSize) {
		return nil, fmt.Errorf("%w: frame length %d is over the limit of %d bytes", ErrFrameTooLarge, length, maxFrameSize)
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: stream ended inside a frame of %d bytes", ErrFrame, length)
		}
		return nil, err
	}
	return body, nil
}

// WriteFrame encodes v as one frame and writes it to w in a single Write.
func WriteFrame(w io.Writer, v any) error {
	frame, err := EncodeFrame(v)
	if err != nil {
		return err
	}
	_, err = w.Write(frame)
	return err
}
