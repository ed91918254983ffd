package herd

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// The authenticated session of a herd link (PROTOCOL.md (Handshake); Python: herdrt.herd.handshake).
// Both sides derive everything from the herd secret and the handshake transcript: each side's
// AUTH MAC names its role, and every byte after AUTH travels in AES-256-GCM records sealed with
// a key per direction.

// LinkContext starts every transcript (version 3 of the link handshake).
const LinkContext = "herdrt-link-v3"

// RecordMax is the most plaintext bytes one record carries; TagSize the AES-GCM tag's size.
const (
	RecordMax = 1 << 16
	TagSize   = 16
)

// ErrRecord reports a record that does not open: forged, replayed, reordered or oversized.
var ErrRecord = errors.New("herd: record failed authentication")

func appendField(b, field []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(field)))
	return append(b, field...)
}

// Transcript is what both sides' MACs and keys are derived from:
// "herdrt-link-v3" || u32 BE version || f(dialer) || f(dialerNonce) || f(acceptor) || f(acceptorNonce),
// with f(x) = u16 BE len(x) || x and names in UTF-8.
func Transcript(version uint32, dialer string, dialerNonce []byte, acceptor string, acceptorNonce []byte) []byte {
	b := append([]byte(LinkContext), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(LinkContext):], version)
	b = appendField(b, []byte(dialer))
	b = appendField(b, dialerNonce)
	b = appendField(b, []byte(acceptor))
	return appendField(b, acceptorNonce)
}

func prf(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// LinkSession is what one side of a link derives from the secret and the transcript:
// prk = HMAC-SHA256(secret, transcript); a side's MAC is HMAC-SHA256(prk, "<role> auth") and the
// key of the records it sends HMAC-SHA256(prk, "<role> to <other role>").
type LinkSession struct {
	OwnMAC, PeerMAC  []byte
	SendKey, RecvKey []byte
}

// NewLinkSession derives the session of the dialling side (dialer true) or the accepting side.
func NewLinkSession(secret, transcript []byte, dialer bool) LinkSession {
	m := hmac.New(sha256.New, secret)
	m.Write(transcript)
	prk := m.Sum(nil)
	dMAC, aMAC := prf(prk, "dialer auth"), prf(prk, "acceptor auth")
	dKey, aKey := prf(prk, "dialer to acceptor"), prf(prk, "acceptor to dialer")
	if dialer {
		return LinkSession{OwnMAC: dMAC, PeerMAC: aMAC, SendKey: dKey, RecvKey: aKey}
	}
	return LinkSession{OwnMAC: aMAC, PeerMAC: dMAC, SendKey: aKey, RecvKey: dKey}
}

// Verify reports whether mac is the peer's AUTH for this transcript (constant time).
func (s LinkSession) Verify(mac []byte) bool { return hmac.Equal(s.PeerMAC, mac) }

func newGCM(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // keys are 32 bytes by construction
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return gcm
}

func recordNonce(seq uint64) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

// Sealer seals the bytes one side sends into records numbered from 0.
type Sealer struct {
	aead cipher.AEAD
	Seq  uint64
}

// NewSealer seals with key (a session's SendKey).
func NewSealer(key []byte) *Sealer { return &Sealer{aead: newGCM(key)} }

// Seal returns data as records of up to RecordMax plaintext bytes each (one record if it fits).
func (s *Sealer) Seal(data []byte) []byte {
	var out []byte
	for {
		n := len(data)
		if n > RecordMax {
			n = RecordMax
		}
		header := binary.BigEndian.AppendUint32(nil, uint32(n+TagSize))
		out = append(out, header...)
		out = s.aead.Seal(out, recordNonce(s.Seq), data[:n], header)
		s.Seq++
		data = data[n:]
		if len(data) == 0 {
			return out
		}
	}
}

// Opener opens the records of a byte stream split anywhere.
type Opener struct {
	aead cipher.AEAD
	buf  []byte
	Seq  uint64
}

// NewOpener opens with key (a session's RecvKey).
func NewOpener(key []byte) *Opener { return &Opener{aead: newGCM(key)} }

// Feed returns the plaintext of every record that data completes. An error wraps ErrRecord;
// the stream is dead after it.
func (o *Opener) Feed(data []byte) ([]byte, error) {
	o.buf = append(o.buf, data...)
	var out []byte
	for len(o.buf) >= 4 {
		n := int(binary.BigEndian.Uint32(o.buf))
		if n < TagSize || n > RecordMax+TagSize {
			return nil, fmt.Errorf("%w: length %d is outside [%d, %d]", ErrRecord, n, TagSize, RecordMax+TagSize)
		}
		if len(o.buf) < 4+n {
			break
		}
		plain, err := o.aead.Open(nil, recordNonce(o.Seq), o.buf[4:4+n], o.buf[:4])
		if err != nil {
			return nil, fmt.Errorf("%w: record %d", ErrRecord, o.Seq)
		}
		o.Seq++
		out = append(out, plain...)
		o.buf = o.buf[4+n:]
	}
	return out, nil
}
