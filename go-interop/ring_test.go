package herd

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

type ringKey struct {
	Str *string `json:"str"`
	Hex *string `json:"hex"`
}

func (k ringKey) bytes(t *testing.T) []byte {
	t.Helper()
	switch {
	case k.Str != nil && k.Hex == nil:
		return []byte(*k.Str)
	case k.Hex != nil && k.Str == nil:
		return mustHex(t, *k.Hex)
	}
	t.Fatalf("a key needs exactly one of str, hex")
	return nil
}

type ringVectors struct {
	Format string `json:"format"`
	Rings  []struct {
		Name       string         `json:"name"`
		Nodes      []string       `json:"nodes"`
		Vnodes     int            `json:"vnodes"`
		Weights    map[string]int `json:"weights"`
		PointCount int            `json:"point_count"`
		PointsHead []struct {
			Point uint32 `json:"point"`
			Node  string `json:"node"`
		} `json:"points_head"`
		PointsSHA256 string `json:"points_sha256"`
		Lookups      []struct {
			Key     ringKey  `json:"key"`
			Owner   string   `json:"owner"`
			LookupN []string `json:"lookup_n3"`
		} `json:"lookups"`
	} `json:"rings"`
	MD5Shard []struct {
		Key   ringKey `json:"key"`
		N     string  `json:"n"`
		Shard string  `json:"shard"`
	} `json:"md5_shard"`
	JumpHash []struct {
		Key    string `json:"key"`
		N      string `json:"n"`
		Bucket string `json:"bucket"`
	} `json:"jump_hash"`
}

func loadRing(t *testing.T) ringVectors {
	var v ringVectors
	loadVectors(t, "ring.json", &v)
	if v.Format != "herdrt-ring-vectors/1" {
		t.Fatalf("ring.json format %q: this reader knows herdrt-ring-vectors/1 only", v.Format)
	}
	if len(v.Rings) == 0 || len(v.MD5Shard) == 0 || len(v.JumpHash) == 0 {
		t.Fatal("ring.json has an empty section")
	}
	return v
}

func continuumSHA256(points []Point) string {
	var sb strings.Builder
	for _, p := range points {
		fmt.Fprintf(&sb, "%d %s\n", p.Point, p.Node)
	}
	sum := sha256.Sum256([]byte(sb.String()))
	return hex.EncodeToString(sum[:])
}

func TestRingVectors(t *testing.T) {
	v := loadRing(t)
	for _, c := range v.Rings {
		t.Run(c.Name, func(t *testing.T) {
			r, err := New(c.Nodes, c.Vnodes, c.Weights)
			if err != nil {
				t.Fatal(err)
			}
			pts := r.Points()
			if len(pts) != c.PointCount {
				t.Fatalf("point count %d, want %d", len(pts), c.PointCount)
			}
			for i, h := range c.PointsHead {
				if pts[i] != (Point{h.Point, h.Node}) {
					t.Fatalf("point %d = %v, want %v", i, pts[i], h)
				}
			}
			if got := continuumSHA256(pts); got != c.PointsSHA256 {
				t.Fatalf("continuum sha256 %s, want %s", got, c.PointsSHA256)
			}
			if len(c.Lookups) == 0 {
				t.Fatal("no lookups")
			}
			for _, l := range c.Lookups {
				key := l.Key.bytes(t)
				owner, err := r.Lookup(key)
				if err != nil || owner != l.Owner {
					t.Errorf("Lookup(%x) = %q, %v; want %q", key, owner, err, l.Owner)
				}
				got, err := r.LookupN(key, 3)
				if err != nil || !reflect.DeepEqual(got, l.LookupN) {
					t.Errorf("LookupN(%x, 3) = %v, %v; want %v", key, got, err, l.LookupN)
				}
				if l.Key.Str != nil {
					if s, _ := r.LookupString(*l.Key.Str); s != l.Owner {
						t.Errorf("LookupString(%q) = %q, want %q", *l.Key.Str, s, l.Owner)
					}
				}
			}
			// Insertion order changes nothing in the continuum (the tie rule is by name).
			rev := append([]string(nil), c.Nodes...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			r2, err := New(rev, c.Vnodes, c.Weights)
			if err != nil {
				t.Fatal(err)
			}
			if continuumSHA256(r2.Points()) != c.PointsSHA256 {
				t.Fatal("reversed insertion order changes the continuum")
			}
		})
	}
}

func TestMD5ShardVectors(t *testing.T) {
	v := loadRing(t)
	for _, c := range v.MD5Shard {
		key := c.Key.bytes(t)
		n, err := strconv.ParseUint(c.N, 10, 64)
		if err != nil {
			t.Fatalf("n %s: %v", c.N, err)
		}
		got, err := MD5Shard(key, n)
		if err != nil || strconv.FormatUint(got, 10) != c.Shard {
			t.Errorf("MD5Shard(%x, %s) = %d, %v; want %s", key, c.N, got, err, c.Shard)
		}
		nb, _ := new(big.Int).SetString(c.N, 10)
		gb, err := MD5ShardBig(key, nb)
		if err != nil || gb.String() != c.Shard {
			t.Errorf("MD5ShardBig(%x, %s) = %v; want %s", key, c.N, gb, c.Shard)
		}
	}
	if _, err := MD5Shard([]byte("x"), 0); err == nil {
		t.Error("MD5Shard with n = 0 must fail")
	}
	if _, err := MD5ShardBig([]byte("x"), big.NewInt(0)); err == nil {
		t.Error("MD5ShardBig with n = 0 must fail")
	}
}

func TestJumpHashVectors(t *testing.T) {
	v := loadRing(t)
	for _, c := range v.JumpHash {
		key, err1 := strconv.ParseUint(c.Key, 10, 64)
		n, err2 := strconv.ParseInt(c.N, 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad vector %+v", c)
		}
		got, err := JumpHash(key, n)
		if err != nil || strconv.FormatInt(got, 10) != c.Bucket {
			t.Errorf("JumpHash(%s, %s) = %d, %v; want %s", c.Key, c.N, got, err, c.Bucket)
		}
	}
	for _, n := range []int64{0, -1, 1 << 32} {
		if _, err := JumpHash(1, n); err == nil {
			t.Errorf("JumpHash(1, %d) must fail", n)
		}
	}
}

func TestRingEmptyAndErrors(t *testing.T) {
	r, err := New(nil, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Vnodes() != DefaultVnodes {
		t.Errorf("default vnodes %d", r.Vnodes())
	}
	if _, err := r.Lookup([]byte("k")); !errors.Is(err, ErrEmptyRing) {
		t.Errorf("Lookup on an empty ring: %v", err)
	}
	if got, err := r.LookupN([]byte("k"), 0); err != nil || len(got) != 0 {
		t.Errorf("LookupN(k, 0) on an empty ring = %v, %v; want [] without error", got, err)
	}
	// want = min(2, no nodes) = 0: the empty answer, as in Python (no hashing, no error).
	if got, err := r.LookupN([]byte("k"), 2); err != nil || len(got) != 0 {
		t.Errorf("LookupN(k, 2) on an empty ring = %v, %v", got, err)
	}
	if _, err := r.LookupN([]byte("k"), -1); err == nil {
		t.Error("LookupN with n < 0 must fail")
	}
	for _, vn := range []int{-4, 2, 6, 161} {
		if _, err := New([]string{"a"}, vn, nil); err == nil {
			t.Errorf("vnodes %d must be refused", vn)
		}
	}
	if _, err := New([]string{"a", "a"}, 0, nil); err == nil {
		t.Error("duplicate node must be refused")
	}
	if _, err := New([]string{"a"}, 0, map[string]int{"b": 2}); err == nil {
		t.Error("a weight for a node not on the ring must be refused")
	}
	if _, err := New([]string{"a"}, 0, map[string]int{"a": 0}); err == nil {
		t.Error("weight 0 must be refused")
	}
	if _, err := New([]string{""}, 0, nil); err == nil {
		t.Error("an empty node name must be refused")
	}
	if _, err := New([]string{"\xff"}, 0, nil); err == nil {
		t.Error("a node name that is not UTF-8 must be refused")
	}
	if err := r.Remove("nope"); err == nil {
		t.Error("removing an absent node must fail")
	}
}

// Adding a node moves keys only to it; removing it moves exactly those keys back.
func TestRingAddRemoveMovesOnlyItsKeys(t *testing.T) {
	r, err := New([]string{"a", "b", "c", "d"}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([][]byte, 4000)
	before := make([]string, len(keys))
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("key-%d", i))
		before[i], _ = r.Lookup(keys[i])
	}
	if err := r.Add("e", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.Add("e", 1); err == nil {
		t.Fatal("adding e twice must fail")
	}
	moved := 0
	for i, k := range keys {
		now, _ := r.Lookup(k)
		if now != before[i] {
			if now != "e" {
				t.Fatalf("key %s moved from %s to %s, not to the new node", k, before[i], now)
			}
			moved++
		}
	}
	// About 1/5 of the keys should move; allow a wide band (the ring is not perfectly even).
	if moved < len(keys)/10 || moved > len(keys)*3/10 {
		t.Errorf("%d of %d keys moved to the new node; want about a fifth", moved, len(keys))
	}
	if w, ok := r.Weight("e"); !ok || w != 1 {
		t.Errorf("Weight(e) = %d, %v", w, ok)
	}
	if err := r.Remove("e"); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if now, _ := r.Lookup(k); now != before[i] {
			t.Fatalf("after removing e, key %s is on %s, not %s", k, now, before[i])
		}
	}
	if !reflect.DeepEqual(r.Nodes(), []string{"a", "b", "c", "d"}) || r.Len() != 4 {
		t.Errorf("Nodes() = %v", r.Nodes())
	}
	if got, _ := r.LookupNString("x", 10); len(got) != 4 {
		t.Errorf("LookupN(x, 10) on 4 nodes = %v", got)
	}
}
