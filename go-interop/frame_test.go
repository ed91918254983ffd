package herd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"testing"
)

func framed(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// msgpack-python accepts 1024 nested containers and refuses 1025; so does DecodeBody.
func TestDecodeBodyNesting(t *testing.T) {
	for _, c := range []struct {
		depth int
		open  byte
		ok    bool
	}{{MaxNesting, 0x91, true}, {MaxNesting + 1, 0x91, false}, {5000, 0x91, false}} {
		body := append(bytes.Repeat([]byte{c.open}, c.depth), 0xc0)
		_, err := DecodeBody(body)
		if (err == nil) != c.ok {
			t.Errorf("depth %d: err = %v", c.depth, err)
		}
	}
	// maps count too: {"a": {"a": ... nil}}
	deep := append(bytes.Repeat([]byte{0x81, 0xa1, 'a'}, MaxNesting+1), 0xc0)
	if _, err := DecodeBody(deep); !errors.Is(err, ErrFrame) {
		t.Errorf("deep maps: %v", err)
	}
}

// A length that the body cannot hold fails before anything of that size is allocated.
func TestDecodeBodyOverclaims(t *testing.T) {
	for name, body := range map[string][]byte{
		"array32": {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},
		"map32":   {0xdf, 0x7f, 0xff, 0xff, 0xff, 0xa1, 'a', 0xc0},
		"bin32":   {0xc6, 0xff, 0xff, 0xff, 0xff, 0x00},
		"str16":   {0xda, 0x01, 0x00, 'a'},
		"ext32":   {0xc9, 0xff, 0xff, 0xff, 0xf0, 0x05},
		"fixarr":  {0x93, 0xc0},
		"uint64":  {0xcf, 0x00},
		"float64": {0xcb, 0x00, 0x00},
		"fixext":  {0xd8, 0x01, 0x00},
	} {
		allocs := testing.AllocsPerRun(1, func() { _, _ = DecodeBody(body) })
		if _, err := DecodeBody(body); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err = %v", name, err)
		}
		if allocs > 20 {
			t.Errorf("%s: %v allocations for a refused body", name, allocs)
		}
	}
}

func TestDecodeBodyTypes(t *testing.T) {
	for _, c := range []struct {
		body []byte
		want any
	}{
		{[]byte{0xca, 0x3f, 0xc0, 0x00, 0x00}, 1.5}, // float32 widened
		{[]byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint64(math.MaxUint64)},
		{[]byte{0xcf, 0, 0, 0, 0, 0, 0, 0, 5}, int64(5)}, // non-minimal forms decode
		{[]byte{0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}, int64(-2)},
		{[]byte{0xd4, 0x05, 0x07}, Ext{Type: 5, Data: []byte{7}}},
		{[]byte{0xd6, 0xff, 0, 0, 0, 1}, Ext{Type: -1, Data: []byte{0, 0, 0, 1}}}, // timestamp 32
		{[]byte{0x81, 0xc4, 0x01, 'k', 0x01}, map[string]any{"k": int64(1)}},      // bin key
		{[]byte{0xc4, 0x00}, []byte{}},
		{[]byte{0xa0}, ""},
	} {
		got, err := DecodeBody(c.body)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("DecodeBody(%x) = %#v, %v; want %#v", c.body, got, err, c.want)
		}
	}
	for name, body := range map[string][]byte{
		"timestamp 5 bytes": {0xc7, 0x05, 0xff, 0, 0, 0, 0, 0},
		"nil map key":       {0x81, 0xc0, 0x01},
		"array map key":     {0x81, 0x90, 0x01},
		"bad utf8 key":      {0x81, 0xa1, 0xff, 0x01},
		"c1":                {0xc1},
		"empty":             {},
	} {
		if _, err := DecodeBody(body); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	// Ext values re-encode as msgpack-python writes them (fixext where the size allows).
	for _, n := range []int{1, 2, 3, 4, 8, 16, 17, 300} {
		x := Ext{Type: 9, Data: bytes.Repeat([]byte{0xab}, n)}
		b, err := Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeBody(b)
		if err != nil || !reflect.DeepEqual(back, x) {
			t.Errorf("ext of %d bytes: %v", n, err)
		}
	}
	if b, _ := Marshal(Ext{Type: 1, Data: []byte{1, 2, 3, 4}}); !bytes.Equal(b, []byte{0xd6, 0x01, 1, 2, 3, 4}) {
		t.Errorf("fixext4 = %x", b)
	}
}

func TestFrameDecoderBehaviour(t *testing.T) {
	if _, err := NewFrameDecoder(-1); err == nil {
		t.Error("negative max frame size accepted")
	}
	d, _ := NewFrameDecoder(HandshakeMaxFrameSize)
	if d.MaxFrameSize() != HandshakeMaxFrameSize {
		t.Error("MaxFrameSize")
	}
	one := framed([]byte{0x01})
	big := framed(make([]byte, HandshakeMaxFrameSize+1))
	// messages before the bad frame in the same Feed are delivered with the error
	msgs, err := d.Feed(append(append(append([]byte{}, one...), one...), big[:4]...))
	if !errors.Is(err, ErrFrameTooLarge) || len(msgs) != 2 {
		t.Fatalf("Feed = %v, %v", msgs, err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close after a failure: %v", err)
	}
	// a stream that stops inside a frame
	d, _ = NewFrameDecoder(0)
	if msgs, err := d.Feed(one[:3]); err != nil || len(msgs) != 0 || d.Buffered() != 3 {
		t.Fatalf("partial header: %v %v %d", msgs, err, d.Buffered())
	}
	if err := d.Close(); !errors.Is(err, ErrFrame) {
		t.Errorf("Close inside a frame: %v", err)
	}
	// a frame exactly at the limit is fine
	d, _ = NewFrameDecoder(3)
	if msgs, err := d.Feed(framed([]byte{0xa2, 'h', 'i'})); err != nil || msgs[0] != "hi" {
		t.Errorf("frame at the limit: %v %v", msgs, err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0}), 10); !errors.Is(err, ErrFrame) {
		t.Errorf("ReadFrame of half a header: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 5, 0xc0}), 10); !errors.Is(err, ErrFrame) {
		t.Errorf("ReadFrame of half a body: %v", err)
	}
	var w bytes.Buffer
	if err := WriteFrame(&w, Bye{Reason: "x"}); err != nil || !bytes.Equal(w.Bytes(), []byte{0, 0, 0, 4, 0x92, 0x09, 0xa1, 'x'}) {
		t.Errorf("WriteFrame = %x, %v", w.Bytes(), err)
	}
	if _, err := EncodeFrame(make(chan int)); err == nil {
		t.Error("a channel encoded")
	}
}

// Go values of every integer width encode in the smallest msgpack form, as Python's ints do.
func TestMarshalCompactInts(t *testing.T) {
	for _, c := range []struct {
		v    any
		want []byte
	}{
		{int8(5), []byte{0x05}},
		{int64(200), []byte{0xcc, 0xc8}},
		{int32(-33), []byte{0xd0, 0xdf}},
		{uint16(70), []byte{0x46}},
		{uint64(1 << 32), []byte{0xcf, 0, 0, 0, 1, 0, 0, 0, 0}},
		{int(-32769), []byte{0xd2, 0xff, 0xff, 0x7f, 0xff}},
		{1.0, []byte{0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}},
		{map[string]any{"b": 1, "a": 2}, []byte{0x82, 0xa1, 'a', 0x02, 0xa1, 'b', 0x01}},
		{[]byte{}, []byte{0xc4, 0x00}},
	} {
		if got, err := Marshal(c.v); err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("Marshal(%#v) = %x, %v; want %x", c.v, got, err, c.want)
		}
	}
}

// Unmarshal validates first, then fills typed structs through vmihailenco/msgpack.
func TestUnmarshalAsArrayStruct(t *testing.T) {
	type tell struct {
		_msgpack struct{} `msgpack:",as_array"`
		Kind     int
		Target   string
		Payload  []byte
		Corr     any
	}
	body := []byte{0x94, 0x02, 0xa9, 'e', 'c', 'h', 'o', '@', 'B', 'o', 'n', 'a', 0xc4, 0x02, 0x01, 0x02, 0xc0}
	var got tell
	if err := Unmarshal(body, &got); err != nil || got.Kind != 2 || got.Target != "echo@Bona" || !bytes.Equal(got.Payload, []byte{1, 2}) || got.Corr != nil {
		t.Fatalf("Unmarshal = %+v, %v", got, err)
	}
	if err := Unmarshal(append(body, 0x00), &got); !errors.Is(err, ErrFrame) {
		t.Errorf("trailing byte: %v", err)
	}
}
