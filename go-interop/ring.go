package herd

import (
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"sort"
	"strconv"
	"unicode/utf8"
)

// ErrEmptyRing is returned by lookups on a ring that has no nodes (Python: EmptyRingError).
var ErrEmptyRing = errors.New("herd: the hash ring has no nodes; add one before looking up keys")

// DefaultVnodes is the number of points per node at weight 1, as in Python's HashRing.
const DefaultVnodes = 160

// Point is one entry of the continuum: a 32-bit position and the node that owns it.
type Point struct {
	Point uint32
	Node  string
}

// HashRing is the ketama MD5 consistent-hash ring of PROTOCOL.md ("Hash ring"), identical in
// placement to herdrt's Python HashRing. It is not safe for concurrent mutation; guard Add and
// Remove with a lock if lookups run on other goroutines at the same time.
type HashRing struct {
	vnodes  int
	nodes   []string // insertion order
	weights map[string]int
	points  []uint32
	owners  []string
}

// NewHashRing builds a ring over nodes (in that insertion order). vnodes must be a positive
// multiple of 4 (0 means DefaultVnodes). weights may be nil; a node missing from it has weight 1,
// and a weight for a node not in nodes is an error.
func NewHashRing(nodes []string, vnodes int, weights map[string]int) (*HashRing, error) {
	if vnodes == 0 {
		vnodes = DefaultVnodes
	}
	if vnodes < 4 || vnodes%4 != 0 {
		return nil, fmt.Errorf("herd: vnodes must be a positive multiple of 4, not %d", vnodes)
	}
	r := &HashRing{vnodes: vnodes, weights: make(map[string]int, len(nodes))}
	for _, n := range nodes {
		w, ok := weights[n]
		if !ok {
			w = 1
		}
		if err := r.checkNew(n, w); err != nil {
			return nil, err
		}
		r.nodes = append(r.nodes, n)
		r.weights[n] = w
	}
	for n := range weights {
		if _, ok := r.weights[n]; !ok {
			return nil, fmt.Errorf("herd: weight given for %q, which is not on the ring", n)
		}
	}
	r.rebuild()
	return r, nil
}

// New is NewHashRing.
func New(nodes []string, vnodes int, weights map[string]int) (*HashRing, error) {
	return NewHashRing(nodes, vnodes, weights)
}

func (r *HashRing) checkNew(node string, weight int) error {
	if node == "" {
		return errors.New("herd: ring node names must not be empty")
	}
	if !utf8.ValidString(node) {
		return fmt.Errorf("herd: ring node name %q is not valid UTF-8", node)
	}
	if _, dup := r.weights[node]; dup {
		return fmt.Errorf("herd: node %q is already on the ring", node)
	}
	if weight < 1 {
		return fmt.Errorf("herd: node %q: weight must be a positive integer, not %d", node, weight)
	}
	return nil
}

type ringEntry struct {
	point uint32
	node  string
}

func (r *HashRing) rebuild() {
	n := int64(len(r.nodes))
	total := new(big.Int)
	for _, node := range r.nodes {
		total.Add(total, big.NewInt(int64(r.weights[node])))
	}
	perNode := int64(r.vnodes / 4)
	var entries []ringEntry
	count := new(big.Int)
	for _, node := range r.nodes {
		// count = per_node * n * w // W, in arbitrary precision as the spec requires.
		count.SetInt64(perNode)
		count.Mul(count, big.NewInt(n))
		count.Mul(count, big.NewInt(int64(r.weights[node])))
		count.Quo(count, total)
		c := count.Int64()
		buf := make([]byte, 0, len(node)+24)
		for i := int64(0); i < c; i++ {
			buf = append(buf[:0], node...)
			buf = append(buf, '-')
			buf = strconv.AppendInt(buf, i, 10)
			d := md5.Sum(buf)
			for k := 0; k < 16; k += 4 {
				entries = append(entries, ringEntry{binary.LittleEndian.Uint32(d[k : k+4]), node})
			}
		}
	}
	// Sort by point, ties by node name in byte order (Go strings compare byte-wise), then keep
	// the first of each run of equal points: the tie rule of PROTOCOL.md.
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].point != entries[j].point {
			return entries[i].point < entries[j].point
		}
		return entries[i].node < entries[j].node
	})
	r.points = r.points[:0]
	r.owners = r.owners[:0]
	for _, e := range entries {
		if len(r.points) > 0 && r.points[len(r.points)-1] == e.point {
			continue
		}
		r.points = append(r.points, e.point)
		r.owners = append(r.owners, e.node)
	}
}

func keyHash(key []byte) uint32 {
	d := md5.Sum(key)
	return binary.LittleEndian.Uint32(d[:4])
}

func (r *HashRing) index(key []byte) (int, error) {
	if len(r.points) == 0 {
		return 0, ErrEmptyRing
	}
	h := keyHash(key)
	i := sort.Search(len(r.points), func(i int) bool { return r.points[i] >= h })
	if i == len(r.points) {
		i = 0
	}
	return i, nil
}

// Lookup returns the node that owns key (raw bytes; see LookupString for text).
func (r *HashRing) Lookup(key []byte) (string, error) {
	i, err := r.index(key)
	if err != nil {
		return "", err
	}
	return r.owners[i], nil
}

// LookupString returns the node that owns a text key (hashed as its UTF-8 bytes).
func (r *HashRing) LookupString(key string) (string, error) {
	return r.Lookup([]byte(key))
}

// LookupN returns up to n distinct nodes for key in ring order, the owner first (for replicas).
// Nodes that own no points are never returned, so the result may be shorter than n.
func (r *HashRing) LookupN(key []byte, n int) ([]string, error) {
	if n < 0 {
		return nil, fmt.Errorf("herd: LookupN needs n >= 0, not %d", n)
	}
	want := n
	if len(r.nodes) < want {
		want = len(r.nodes)
	}
	if want == 0 {
		return []string{}, nil
	}
	i, err := r.index(key)
	if err != nil {
		return nil, err
	}
	found := make([]string, 0, want)
	seen := make(map[string]bool, want)
	size := len(r.owners)
	for step := 0; step < size && len(found) < want; step++ {
		node := r.owners[(i+step)%size]
		if !seen[node] {
			seen[node] = true
			found = append(found, node)
		}
	}
	return found, nil
}

// LookupNString is LookupN for a text key.
func (r *HashRing) LookupNString(key string, n int) ([]string, error) {
	return r.LookupN([]byte(key), n)
}

// Add puts node on the ring with weight (its share relative to the others) and rebuilds the
// continuum.
func (r *HashRing) Add(node string, weight int) error {
	if err := r.checkNew(node, weight); err != nil {
		return err
	}
	r.nodes = append(r.nodes, node)
	r.weights[node] = weight
	r.rebuild()
	return nil
}

// Remove takes node off the ring; its keys move to the nodes that follow its points.
func (r *HashRing) Remove(node string) error {
	if _, ok := r.weights[node]; !ok {
		return fmt.Errorf("herd: node %q is not on the ring", node)
	}
	delete(r.weights, node)
	for i, n := range r.nodes {
		if n == node {
			r.nodes = append(r.nodes[:i:i], r.nodes[i+1:]...)
			break
		}
	}
	r.rebuild()
	return nil
}

// Nodes returns the nodes in the order they were added.
func (r *HashRing) Nodes() []string { return append([]string(nil), r.nodes...) }

// Len is the number of nodes.
func (r *HashRing) Len() int { return len(r.nodes) }

// Vnodes is the number of points per node at weight 1.
func (r *HashRing) Vnodes() int { return r.vnodes }

// Weight returns the weight of node and whether it is on the ring.
func (r *HashRing) Weight(node string) (int, bool) {
	w, ok := r.weights[node]
	return w, ok
}

// Points returns the whole continuum in ascending order (for inspection and test vectors).
func (r *HashRing) Points() []Point {
	out := make([]Point, len(r.points))
	for i, p := range r.points {
		out[i] = Point{p, r.owners[i]}
	}
	return out
}

// MD5Shard is the textbook shard: key's MD5 digest read as a 128-bit big-endian unsigned
// integer, modulo n (n >= 1). Everything moves when n changes; use it for fixed shard counts.
func MD5Shard(key []byte, n uint64) (uint64, error) {
	if n < 1 {
		return 0, errors.New("herd: MD5Shard needs n >= 1")
	}
	d := md5.Sum(key)
	hi := binary.BigEndian.Uint64(d[:8])
	lo := binary.BigEndian.Uint64(d[8:])
	// (hi * 2^64 + lo) mod n; bits.Rem64 takes the 128-bit dividend as two halves.
	return bits.Rem64(hi, lo, n), nil
}

// MD5ShardBig is MD5Shard for a modulus of any size (PROTOCOL.md allows n beyond 64 bits).
func MD5ShardBig(key []byte, n *big.Int) (*big.Int, error) {
	if n.Sign() < 1 {
		return nil, errors.New("herd: MD5ShardBig needs n >= 1")
	}
	d := md5.Sum(key)
	v := new(big.Int).SetBytes(d[:])
	return v.Mod(v, n), nil
}

// JumpHash is the jump consistent hash of Lamping & Veach (2014): the bucket in [0, n) of a
// 64-bit key, exactly as PROTOCOL.md spells it (float64 division, then multiplication, then
// truncation). n must be in [1, 2^32 - 1].
func JumpHash(key uint64, n int64) (int64, error) {
	if n < 1 {
		return 0, fmt.Errorf("herd: JumpHash needs n >= 1, not %d", n)
	}
	if n > math.MaxUint32 {
		return 0, fmt.Errorf("herd: JumpHash supports n <= 2^32-1, not %d", n)
	}
	var b, j int64 = -1, 0
	for j < n {
		b = j
		key = key*2862933555777941757 + 1
		// Two explicit float64 conversions keep Go from fusing the multiply and divide.
		q := float64(2147483648.0) / float64((key>>33)+1)
		j = int64(float64(b+1) * q)
	}
	return b, nil
}
