package herd

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// The golden vectors live in the Python tree (tests/vectors/ at the repository root); both
// test suites read the same files, so neither side can drift.
func loadVectors(t *testing.T, name string, into any) {
	t.Helper()
	path := filepath.Join("..", "tests", "vectors", name)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden vectors: %v", err)
	}
	if err := json.Unmarshal(data, into); err != nil {
		t.Fatalf("golden vectors %s: %v", name, err)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// jsonFloat reads a double that the vectors may spell "NaN", "Infinity" or "-Infinity".
type jsonFloat float64

func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		switch s {
		case "NaN":
			*f = jsonFloat(math.NaN())
		case "Infinity":
			*f = jsonFloat(math.Inf(1))
		case "-Infinity":
			*f = jsonFloat(math.Inf(-1))
		default:
			v, err := strconv.ParseFloat(s, 64)
			*f = jsonFloat(v)
			return err
		}
		return nil
	}
	var v float64
	err := json.Unmarshal(b, &v)
	*f = jsonFloat(v)
	return err
}

// untag turns the tagged JSON form of envelopes.json into the Go value DecodeBody returns.
func untag(t *testing.T, raw json.RawMessage) any {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || len(obj) != 1 {
		t.Fatalf("bad tagged value %s", raw)
	}
	for tag, v := range obj {
		switch tag {
		case "nil":
			return nil
		case "bool":
			var b bool
			_ = json.Unmarshal(v, &b)
			return b
		case "int":
			var s string
			_ = json.Unmarshal(v, &s)
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return i
			}
			u, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("int out of 64-bit range: %s", s)
			}
			return u
		case "float":
			var f jsonFloat
			if err := json.Unmarshal(v, &f); err != nil {
				t.Fatal(err)
			}
			return float64(f)
		case "str":
			var s string
			_ = json.Unmarshal(v, &s)
			return s
		case "bin":
			var s string
			_ = json.Unmarshal(v, &s)
			return mustHex(t, s)
		case "array":
			var items []json.RawMessage
			_ = json.Unmarshal(v, &items)
			out := make([]any, len(items))
			for i, it := range items {
				out[i] = untag(t, it)
			}
			return out
		case "map":
			var pairs [][2]json.RawMessage
			_ = json.Unmarshal(v, &pairs)
			out := make(map[string]any, len(pairs))
			for _, p := range pairs {
				k, ok := untag(t, p[0]).(string)
				if !ok {
					t.Fatalf("map key %s is not a str", p[0])
				}
				out[k] = untag(t, p[1])
			}
			return out
		}
		t.Fatalf("unknown tag %q", tag)
	}
	return nil
}
