package herd

import (
	"bytes"
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
	AuthMACs []struct {
		SecretHex    string `json:"secret_hex"`
		PeerNonceHex string `json:"peer_nonce_hex"`
		OwnName      string `json:"own_name"`
		PeerName     string `json:"peer_name"`
		MACHex       string `json:"mac_hex"`
	} `json:"auth_macs"`
}

func loadEnvelopes(t *testing.T) envelopeVectors {
	var v envelopeVectors
	loadVectors(t, "envelopes.json", &v)
	if v.Format != "herdrt-envelope-vectors/1" {
		t.Fatalf("envelopes.json format %q: this reader knows herdrt-envelope-vectors/1 only", v.Format)
	}
	if len(v.Valid) == 0 || len(v.BadFrames) == 0 || len(v.BadEnvelopes) == 0 || len(v.AuthMACs) == 0 {
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
		"auth-clark-to-bona": Auth{MAC: AuthMAC(secret, nonceB, "Clark", "Bona")},
		"error-auth-link":    ErrorEnvelope{Code: ECodeAuth, Message: "authentication failed: the shared secret differs"},
		"error-corr-int":     ErrorEnvelope{CorrID: 42, Code: ECodeOverflow, Message: "mailbox full"},
		"heartbeat-7":        Heartbeat{Seq: 7, SentTime: 1700000000.25},
		"heartbeat-8-echo":   Heartbeat{Seq: 8, SentTime: 1700000000.75, HasEcho: true, EchoTime: 1700000000.5, Hold: 0.001},
		"bye-shutdown":       Bye{Reason: "shutdown"},
		"node-tell":          NodeEnvelope{K: KindTell, Rest: []any{"echo@Bona", []byte{1, 2}, nil}},
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

func TestAuthMACVectors(t *testing.T) {
	v := loadEnvelopes(t)
	for _, c := range v.AuthMACs {
		secret, nonce, want := mustHex(t, c.SecretHex), mustHex(t, c.PeerNonceHex), mustHex(t, c.MACHex)
		if got := AuthMAC(secret, nonce, c.OwnName, c.PeerName); !bytes.Equal(got, want) {
			t.Errorf("AuthMAC(%s -> %s) = %x, want %x", c.OwnName, c.PeerName, got, want)
		}
		// The peer, which sent the nonce, verifies it with the names the other way round.
		if !VerifyAuth(secret, nonce, c.PeerName, c.OwnName, want) {
			t.Errorf("%s -> %s: the peer does not verify the MAC", c.OwnName, c.PeerName)
		}
		if VerifyAuth(secret, nonce, c.OwnName, c.PeerName, want) {
			t.Errorf("%s -> %s: a reflected MAC verifies", c.OwnName, c.PeerName)
		}
		bad := append([]byte{want[0] ^ 1}, want[1:]...)
		if VerifyAuth(secret, nonce, c.PeerName, c.OwnName, bad) {
			t.Error("a flipped bit verifies")
		}
	}
	n1, err1 := NewNonce()
	n2, err2 := NewNonce()
	if err1 != nil || err2 != nil || len(n1) != NonceSize || bytes.Equal(n1, n2) {
		t.Error("NewNonce must give fresh 16-byte nonces")
	}
}
