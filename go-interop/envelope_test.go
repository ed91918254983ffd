package herd

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

type envelopeVectors struct {
	Format       string `json:"format"`
	MaxFrameSize int    `json:"max_frame_size"`
	Valid        []struct {
		Name     string          `json:"name"`
		Kind     *int64          `json:"kind"`
		Value    json.RawMessage `json:"value"`
		BodyHex  string          `json:"body_hex"`
		FrameHex string          `json:"frame_hex"`
	} `json:"valid"`
	BadFrames []struct {
		Name     string `json:"name"`
		FrameHex string `json:"frame_hex"`
		Error    string `json:"error"`
	} `json:"bad_frames"`
	BadEnvelopes []struct {
		Name    string          `json:"name"`
		Parser  string          `json:"parser"`
		Value   json.RawMessage `json:"value"`
		BodyHex string          `json:"body_hex"`
	} `json:"bad_envelopes"`
	ExtendedEnvelopes []struct {
		Name    string          `json:"name"`
		Parser  string          `json:"parser"`
		Value   json.RawMessage `json:"value"`
		BodyHex string          `json:"body_hex"`
		Base    json.RawMessage `json:"base"`
	} `json:"extended_envelopes"`
	LinkSessions []struct {
		SecretHex        string `json:"secret_hex"`
		Version          uint32 `json:"version"`
		Dialer           string `json:"dialer"`
		DialerNonceHex   string `json:"dialer_nonce_hex"`
		Acceptor         string `json:"acceptor"`
		AcceptorNonceHex string `json:"acceptor_nonce_hex"`
		TranscriptHex    string `json:"transcript_hex"`
		DialerMACHex     string `json:"dialer_mac_hex"`
		AcceptorMACHex   string `json:"acceptor_mac_hex"`
		DialerKeyHex     string `json:"dialer_key_hex"`
		AcceptorKeyHex   string `json:"acceptor_key_hex"`
		Records          []struct {
			Sender    string `json:"sender"`
			Seq       uint64 `json:"seq"`
			PlainHex  string `json:"plain_hex"`
			RecordHex string `json:"record_hex"`
		} `json:"records"`
		BigRecord struct {
			Sender       string `json:"sender"`
			Seq          uint64 `json:"seq"`
			PlainLen     int    `json:"plain_len"`
			SealedSHA256 string `json:"sealed_sha256"`
		} `json:"big_record"`
	} `json:"link_sessions"`
}

func loadEnvelopes(t *testing.T) envelopeVectors {
	var v envelopeVectors
	loadVectors(t, "envelopes.json", &v)
	if v.Format != "herdrt-envelope-vectors/2" {
		t.Fatalf("envelopes.json format %q: this reader knows herdrt-envelope-vectors/2 only", v.Format)
	}
	if len(v.Valid) == 0 || len(v.BadFrames) == 0 || len(v.BadEnvelopes) == 0 || len(v.LinkSessions) == 0 {
		t.Fatal("envelopes.json has an empty section")
	}
	if v.MaxFrameSize != DefaultMaxFrameSize {
		t.Fatalf("vectors assume max frame size %d, Go's default is %d", v.MaxFrameSize, DefaultMaxFrameSize)
	}
	return v
}

func TestEnvelopeVectorsValid(t *testing.T) {
	v := loadEnvelopes(t)
	link := 0
	for _, c := range v.Valid {
		t.Run(c.Name, func(t *testing.T) {
			want := untag(t, c.Value)
			body := mustHex(t, c.BodyHex)
			frame := mustHex(t, c.FrameHex)

			// decode: the body is exactly the stated value
			got, err := DecodeBody(body)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %#v\nwant    %#v", got, want)
			}
			// encode: the value gives the very same bytes, as a body and as a frame
			if b, err := Marshal(want); err != nil || !bytes.Equal(b, body) {
				t.Fatalf("Marshal = %x, %v\nwant      %x", b, err, body)
			}
			if f, err := EncodeFrame(want); err != nil || !bytes.Equal(f, frame) {
				t.Fatalf("EncodeFrame = %x, %v\nwant          %x", f, err, frame)
			}
			if c.Kind == nil {
				if _, err := ParseEnvelope(got); err == nil {
					t.Fatal("a value that is not an envelope parsed as one")
				}
				return
			}
			// typed: the envelope parses to its type and re-encodes to the same bytes
			env, err := DecodeEnvelope(body)
			if err != nil {
				t.Fatal(err)
			}
			if env.Kind() != *c.Kind {
				t.Fatalf("kind %d, want %d", env.Kind(), *c.Kind)
			}
			linkKind := map[int64]bool{KindHello: true, KindAuth: true, KindError: true, KindHeartbeat: true, KindBye: true}
			if _, isNode := env.(NodeEnvelope); isNode == linkKind[*c.Kind] {
				t.Fatalf("kind %d decoded as %T", *c.Kind, env)
			}
			if linkKind[*c.Kind] {
				link++
			}
			if b, err := Marshal(env); err != nil || !bytes.Equal(b, body) {
				t.Fatalf("Marshal(%T) = %x, %v\nwant %x", env, b, err, body)
			}
			if f, err := EncodeFrame(env); err != nil || !bytes.Equal(f, frame) {
				t.Fatalf("EncodeFrame(%T) = %x, %v", env, f, err)
			}
			// and through vmihailenco's own entry point, with no herd encoder flags
			if b, err := msgpack.Marshal(env); err != nil || !bytes.Equal(b, body) {
				t.Fatalf("msgpack.Marshal(%T) = %x, %v", env, b, err)
			}
		})
	}
	if link < 10 {
		t.Errorf("only %d link envelopes among the vectors", link)
	}
}

// The typed envelopes built by hand match the examples of PROTOCOL.md (Links).
func TestEnvelopeConstructorsMatchDocs(t *testing.T) {
	v := loadEnvelopes(t)
	frames := map[string]string{}
	for _, c := range v.Valid {
		frames[c.Name] = c.FrameHex
	}
	nonceA := make([]byte, 16)
	nonceB := make([]byte, 16)
	for i := range nonceA {
		nonceA[i], nonceB[i] = byte(i), byte(16+i)
	}
	secret := []byte("correct horse battery")
	for name, env := range map[string]Envelope{
		"hello-clark":        Hello{Version: ProtocolVersion, NodeName: "Clark", Nonce: nonceA},
		"auth-clark-to-bona": Auth{MAC: NewLinkSession(secret, Transcript(3, "Clark", nonceA, "Bona", nonceB), true).OwnMAC},
		"error-auth-link":    ErrorEnvelope{Code: ECodeAuth, Message: "authentication failed: the shared secret differs"},
		"error-corr-int":     ErrorEnvelope{CorrID: 42, Code: ECodeOverflow, Message: "mailbox full"},
		"heartbeat-7":        Heartbeat{Seq: 7, SentTime: 1700000000.25},
		"heartbeat-8-echo":   Heartbeat{Seq: 8, SentTime: 1700000000.75, HasEcho: true, EchoTime: 1700000000.5, Hold: 0.001},
		"bye-shutdown":       Bye{Reason: "shutdown"},
		"node-tell":          NodeEnvelope{K: KindTell, Rest: []any{"Bona", "echo", []byte{1, 2}}},
		"node-ask":           NodeEnvelope{K: KindAsk, Rest: []any{"Bona", "svc", map[string]any{"a": 1, "b": []any{1.5, true, false}}, "Clark", 17}},
		"node-tell-src":      NodeEnvelope{K: KindTell, Rest: []any{"Bona", "echo", []byte{1, 2}, "Clark"}},
		"node-send-open":     NodeEnvelope{K: KindSend, Rest: []any{"Bona", "sink", []any{}, "Clark", 123456789, 0}},
		"node-send":          NodeEnvelope{K: KindSend, Rest: []any{"Bona", []any{"session", "user-42"}, []any{1, "two", map[string]any{"k": 3.5}}, "Clark", 123456789, 4096}},
		"node-credit":        NodeEnvelope{K: KindCredit, Rest: []any{"Clark", 123456789, 4099, 8192, nil}},
		"node-credit-closed": NodeEnvelope{K: KindCredit, Rest: []any{"Clark", 123456789, 10, 10, []any{"ActorStopped", "actor sink@Bona stopped"}}},
		"node-dead-letters":  NodeEnvelope{K: KindDeadLetters, Rest: []any{"Clark", "Bona", []any{[]any{"sink@Bona", "mailbox_full", 20}, []any{"[session, k1]", "unknown_actor", 1}}}},
	} {
		want, ok := frames[name]
		if !ok {
			t.Fatalf("no vector %q", name)
		}
		f, err := EncodeFrame(env)
		if err != nil || !bytes.Equal(f, mustHex(t, want)) {
			t.Errorf("%s: EncodeFrame = %x, %v\nwant %s", name, f, err, want)
		}
	}
}

func TestEnvelopeVectorsStream(t *testing.T) {
	v := loadEnvelopes(t)
	var stream []byte
	var want []any
	for _, c := range v.Valid {
		stream = append(stream, mustHex(t, c.FrameHex)...)
		want = append(want, untag(t, c.Value))
	}
	for _, step := range []int{1, 3, 7, 64, len(stream)} {
		d, _ := NewFrameDecoder(0)
		var got []any
		for i := 0; i < len(stream); i += step {
			msgs, err := d.Feed(stream[i:min(i+step, len(stream))])
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, msgs...)
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: stream decodes differently", step)
		}
	}
	// ReadFrame over an io.Reader gives the same bodies, then io.EOF.
	r := bytes.NewReader(stream)
	for i, c := range v.Valid {
		body, err := ReadFrame(r, DefaultMaxFrameSize)
		if err != nil || !bytes.Equal(body, mustHex(t, c.BodyHex)) {
			t.Fatalf("ReadFrame %d: %x, %v", i, body, err)
		}
	}
	if _, err := ReadFrame(r, DefaultMaxFrameSize); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	// EncodeFrames batches them into the same stream.
	batch, err := EncodeFrames(want...)
	if err != nil || !bytes.Equal(batch, stream) {
		t.Fatalf("EncodeFrames differs: %v", err)
	}
}

func TestEnvelopeVectorsBadFrames(t *testing.T) {
	v := loadEnvelopes(t)
	for _, c := range v.BadFrames {
		t.Run(c.Name, func(t *testing.T) {
			frame := mustHex(t, c.FrameHex)
			d, _ := NewFrameDecoder(v.MaxFrameSize)
			msgs, err := d.Feed(frame)
			if err == nil {
				err = d.Close()
			}
			if err == nil || len(msgs) != 0 {
				t.Fatalf("accepted: %v", msgs)
			}
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error %v does not wrap ErrFrame", err)
			}
			if tooLarge := errors.Is(err, ErrFrameTooLarge); tooLarge != (c.Error == "too_large") {
				t.Fatalf("error %v: too large = %v, vector says %q", err, tooLarge, c.Error)
			}
			// the decoder now refuses everything
			if _, err := d.Feed([]byte{0, 0, 0, 1, 0xc0}); err == nil {
				t.Fatal("decoder accepts input after an error")
			}
			// ReadFrame + DecodeBody agree
			body, err := ReadFrame(bytes.NewReader(frame), v.MaxFrameSize)
			if err == nil {
				_, err = DecodeBody(body)
			}
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("ReadFrame/DecodeBody: %v", err)
			}
		})
	}
}

func TestEnvelopeVectorsBadEnvelopes(t *testing.T) {
	v := loadEnvelopes(t)
	parsers := map[string]func(any) error{
		"hello":     func(x any) error { _, err := ParseHello(x); return err },
		"auth":      func(x any) error { _, err := ParseAuth(x); return err },
		"error":     func(x any) error { _, err := ParseError(x); return err },
		"heartbeat": func(x any) error { _, err := ParseHeartbeat(x); return err },
		"bye":       func(x any) error { _, err := ParseBye(x); return err },
	}
	for _, c := range v.BadEnvelopes {
		t.Run(c.Name, func(t *testing.T) {
			body := mustHex(t, c.BodyHex)
			val, err := DecodeBody(body)
			if err != nil {
				t.Fatalf("a well-formed body failed to decode: %v", err)
			}
			if !reflect.DeepEqual(val, untag(t, c.Value)) {
				t.Fatal("decoded value differs from the vector")
			}
			parse, ok := parsers[c.Parser]
			if !ok {
				t.Fatalf("unknown parser %q", c.Parser)
			}
			var pe *ProtocolError
			if err := parse(val); !errors.As(err, &pe) || pe.Code != ECodeProtocol {
				t.Fatalf("Parse%s accepted it (err %v)", c.Parser, err)
			}
			if _, err := DecodeEnvelope(body); !errors.As(err, &pe) {
				t.Fatalf("DecodeEnvelope accepted it (err %v)", err)
			}
		})
	}
}

// Every envelope but HELLO and AUTH may gain fields in a later version: the parsers read what
// they know and ignore the rest (PROTOCOL.md, Envelopes); ints are taken where floats are specified.
func TestEnvelopeVectorsExtended(t *testing.T) {
	v := loadEnvelopes(t)
	if len(v.ExtendedEnvelopes) == 0 {
		t.Fatal("no extended_envelopes")
	}
	parsers := map[string]func(any) (any, error){
		"error":     func(x any) (any, error) { return ParseError(x) },
		"heartbeat": func(x any) (any, error) { return ParseHeartbeat(x) },
		"bye":       func(x any) (any, error) { return ParseBye(x) },
	}
	for _, c := range v.ExtendedEnvelopes {
		t.Run(c.Name, func(t *testing.T) {
			val, err := DecodeBody(mustHex(t, c.BodyHex))
			if err != nil || !reflect.DeepEqual(val, untag(t, c.Value)) {
				t.Fatalf("body decodes to %v (%v), not the vector's value", val, err)
			}
			parse, ok := parsers[c.Parser]
			if !ok {
				t.Fatalf("unknown parser %q", c.Parser)
			}
			got, err := parse(val)
			if err != nil {
				t.Fatalf("Parse%s refused it: %v", c.Parser, err)
			}
			want, err := parse(untag(t, c.Base))
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse%s read %#v, want %#v (%v)", c.Parser, got, want, err)
			}
		})
	}
	// ints where floats are specified (no extra fields)
	h, err := ParseHeartbeat([]any{int64(KindHeartbeat), int64(9), uint64(1700000000), int64(-1), int8(0)})
	if err != nil || h.SentTime != 1700000000 || !h.HasEcho || h.EchoTime != -1 || h.Hold != 0 {
		t.Fatalf("int times: %#v, %v", h, err)
	}
	if _, err := ParseHeartbeat([]any{int64(KindHeartbeat), int64(9), true}); err == nil {
		t.Fatal("a bool is no time")
	}
}

func TestLinkSessionVectors(t *testing.T) {
	v := loadEnvelopes(t)
	for _, c := range v.LinkSessions {
		secret := mustHex(t, c.SecretHex)
		script := Transcript(c.Version, c.Dialer, mustHex(t, c.DialerNonceHex), c.Acceptor, mustHex(t, c.AcceptorNonceHex))
		if hex.EncodeToString(script) != c.TranscriptHex {
			t.Fatalf("%s -> %s: transcript %x, want %s", c.Dialer, c.Acceptor, script, c.TranscriptHex)
		}
		d, a := NewLinkSession(secret, script, true), NewLinkSession(secret, script, false)
		for _, pair := range [][2]string{
			{hex.EncodeToString(d.OwnMAC), c.DialerMACHex}, {hex.EncodeToString(a.OwnMAC), c.AcceptorMACHex},
			{hex.EncodeToString(d.SendKey), c.DialerKeyHex}, {hex.EncodeToString(a.SendKey), c.AcceptorKeyHex},
		} {
			if pair[0] != pair[1] {
				t.Errorf("%s -> %s: derived %s, want %s", c.Dialer, c.Acceptor, pair[0], pair[1])
			}
		}
		if !a.Verify(d.OwnMAC) || !d.Verify(a.OwnMAC) || d.Verify(d.OwnMAC) || a.Verify(a.OwnMAC) {
			t.Errorf("%s -> %s: each side must verify the other's MAC and never its own", c.Dialer, c.Acceptor)
		}
		sealers := map[string]*Sealer{"dialer": NewSealer(d.SendKey), "acceptor": NewSealer(a.SendKey)}
		openers := map[string]*Opener{"dialer": NewOpener(a.RecvKey), "acceptor": NewOpener(d.RecvKey)}
		for _, r := range c.Records {
			s := sealers[r.Sender]
			if s.Seq != r.Seq {
				t.Fatalf("sealer at record %d, vector says %d", s.Seq, r.Seq)
			}
			plain := mustHex(t, r.PlainHex)
			sealed := s.Seal(plain)
			if hex.EncodeToString(sealed) != r.RecordHex {
				t.Errorf("%s record %d = %x\nwant %s", r.Sender, r.Seq, sealed, r.RecordHex)
			}
			if got, err := openers[r.Sender].Feed(sealed); err != nil || !bytes.Equal(got, plain) {
				t.Errorf("%s record %d opens as %x, %v", r.Sender, r.Seq, got, err)
			}
		}
		big := make([]byte, c.BigRecord.PlainLen)
		for i := range big {
			big[i] = byte(i % 251)
		}
		s := sealers[c.BigRecord.Sender]
		sealed := s.Seal(big)
		if sum := sha256.Sum256(sealed); hex.EncodeToString(sum[:]) != c.BigRecord.SealedSHA256 {
			t.Errorf("big record sealed to sha256 %x, want %s", sum, c.BigRecord.SealedSHA256)
		}
		// Split anywhere, it still opens; a replayed record does not.
		o := openers[c.BigRecord.Sender]
		var got []byte
		for i := 0; i < len(sealed); i += 1000 {
			part, err := o.Feed(sealed[i:min(i+1000, len(sealed))])
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, part...)
		}
		if !bytes.Equal(got, big) {
			t.Error("the big record does not open to its plaintext")
		}
		if _, err := o.Feed(sealed); !errors.Is(err, ErrRecord) {
			t.Errorf("a replayed record opened (err %v)", err)
		}
	}
	n1, err1 := NewNonce()
	n2, err2 := NewNonce()
	if err1 != nil || err2 != nil || len(n1) != NonceSize || bytes.Equal(n1, n2) {
		t.Error("NewNonce must give fresh 16-byte nonces")
	}
}
