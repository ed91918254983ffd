package herd

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

const (
	// MaxSketchBins is the largest max_bins a QuantileSketch accepts (as in Python).
	MaxSketchBins = 1 << 20
	// DefaultRelativeAccuracy and DefaultMaxBins are Python's QuantileSketch defaults.
	DefaultRelativeAccuracy = 0.01
	DefaultMaxBins          = 2048

	sketchIndexLimit = int64(1) << 61
	// tiny is the smallest normal double: smaller magnitudes count as zero.
	tiny = 0x1p-1022
)

// buckets is one store of a sketch: counts by bucket index, within a window of maxBins
// buckets ending at the highest index ever put.
type buckets struct {
	counts  map[int64]int64
	top     int64
	hasTop  bool
	maxBins int64
}

func newBuckets(maxBins int) *buckets {
	return &buckets{counts: map[int64]int64{}, maxBins: int64(maxBins)}
}

func (b *buckets) put(index, count int64) {
	if !b.hasTop || index > b.top {
		b.top, b.hasTop = index, true
		floor := b.top - b.maxBins + 1
		var folded int64
		low := false
		for i, c := range b.counts {
			if i < floor {
				folded += c
				low = true
				delete(b.counts, i)
			}
		}
		if low {
			b.counts[floor] += folded
		}
	}
	if floor := b.top - b.maxBins + 1; index < floor {
		index = floor
	}
	b.counts[index] += count
}

func (b *buckets) sortedIndexes() []int64 {
	idx := make([]int64, 0, len(b.counts))
	for i := range b.counts {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	return idx
}

// pairs is the store as ascending [index, count] pairs (the to_dict form).
func (b *buckets) pairs() [][]int64 {
	out := make([][]int64, 0, len(b.counts))
	for _, i := range b.sortedIndexes() {
		out = append(out, []int64{i, b.counts[i]})
	}
	return out
}

// QuantileSketch is a mergeable quantile sketch with bounded relative error (DDSketch-style
// log buckets), identical in buckets and answers to Python's QuantileSketch: a value x > 0
// goes in bucket ceil(ln x / ln gamma), gamma = (1+a)/(1-a); negatives use a second store;
// magnitudes below the smallest normal double count as zero. Each store keeps at most maxBins
// buckets ending at its highest; lower ones fold into its lowest. Non-finite samples are
// skipped and counted. Build one with NewQuantileSketch. Not safe for concurrent use.
type QuantileSketch struct {
	a        float64
	gamma    float64
	lg       float64
	maxBins  int
	pos, neg *buckets
	zero     int64
	n        int64
	min, max float64
	skipped  int64
}

// NewQuantileSketch returns an empty sketch with relative accuracy a (0 < a < 1, e.g. 0.01)
// and at most maxBins buckets per sign (1 <= maxBins <= MaxSketchBins).
func NewQuantileSketch(relativeAccuracy float64, maxBins int) (*QuantileSketch, error) {
	if !(relativeAccuracy > 0 && relativeAccuracy < 1) {
		return nil, fmt.Errorf("herd: relative_accuracy must be in (0, 1), not %v", relativeAccuracy)
	}
	if maxBins < 1 || maxBins > MaxSketchBins {
		return nil, fmt.Errorf("herd: max_bins must be between 1 and %d, not %d", MaxSketchBins, maxBins)
	}
	gamma := (1.0 + relativeAccuracy) / (1.0 - relativeAccuracy)
	return &QuantileSketch{
		a: relativeAccuracy, gamma: gamma, lg: math.Log(gamma), maxBins: maxBins,
		pos: newBuckets(maxBins), neg: newBuckets(maxBins),
		min: math.Inf(1), max: math.Inf(-1),
	}, nil
}

// RelativeAccuracy is the accuracy a the sketch was built with.
func (s *QuantileSketch) RelativeAccuracy() float64 { return s.a }

// MaxBins is the bucket limit per sign.
func (s *QuantileSketch) MaxBins() int { return s.maxBins }

// Count is the number of finite samples added.
func (s *QuantileSketch) Count() int64 { return s.n }

// Skipped is the number of non-finite samples refused.
func (s *QuantileSketch) Skipped() int64 { return s.skipped }

func (s *QuantileSketch) index(mag float64) int64 {
	return int64(math.Ceil(math.Log(mag) / s.lg))
}

// Add adds one sample.
func (s *QuantileSketch) Add(x float64) {
	if !finite(x) {
		s.skipped++
		return
	}
	switch {
	case x >= tiny:
		s.pos.put(s.index(x), 1)
	case x <= -tiny:
		s.neg.put(s.index(-x), 1)
	default:
		s.zero++
	}
	s.n++
	if x < s.min {
		s.min = x
	}
	if x > s.max {
		s.max = x
	}
}

// AddMany adds every sample of xs, in order.
func (s *QuantileSketch) AddMany(xs []float64) {
	for _, x := range xs {
		s.Add(x)
	}
}

// value is the representative of bucket i: 2 gamma^i / (gamma + 1) (+Inf on overflow; the
// caller clamps to max).
func (s *QuantileSketch) value(i int64) float64 {
	return 2.0 * math.Pow(s.gamma, float64(i)) / (s.gamma + 1.0)
}

// Quantile returns the q-quantile (0 <= q <= 1) within relative error a of the true value at
// rank q*(n-1), clamped to the exact min and max (which q = 0 and 1 return); NaN when empty.
func (s *QuantileSketch) Quantile(q float64) (float64, error) {
	if !(q >= 0 && q <= 1) {
		return math.NaN(), fmt.Errorf("herd: quantile needs 0 <= q <= 1, not %v", q)
	}
	if s.n == 0 {
		return math.NaN(), nil
	}
	if q == 0 {
		return s.min, nil
	}
	if q == 1 {
		return s.max, nil
	}
	rank := q * float64(s.n-1)
	var seen int64
	value := s.max
	done := false
	neg := s.neg.sortedIndexes()
	for k := len(neg) - 1; k >= 0; k-- { // most negative first
		seen += s.neg.counts[neg[k]]
		if float64(seen) > rank {
			value, done = -s.value(neg[k]), true
			break
		}
	}
	if !done {
		seen += s.zero
		if float64(seen) > rank {
			value, done = 0.0, true
		}
	}
	if !done {
		for _, i := range s.pos.sortedIndexes() {
			seen += s.pos.counts[i]
			if float64(seen) > rank {
				value = s.value(i)
				break
			}
		}
	}
	return math.Min(math.Max(value, s.min), s.max), nil
}

// ErrSketchMismatch is returned when merging sketches with different parameters.
var ErrSketchMismatch = errors.New("herd: can only merge sketches with the same relative_accuracy and max_bins")

// Merge folds other (same accuracy and max bins) into s; the result equals one sketch fed
// both streams, exactly.
func (s *QuantileSketch) Merge(other *QuantileSketch) error {
	if other.a != s.a || other.maxBins != s.maxBins {
		return ErrSketchMismatch
	}
	for _, st := range [2][2]*buckets{{s.pos, other.pos}, {s.neg, other.neg}} {
		for _, p := range st[1].pairs() {
			st[0].put(p[0], p[1])
		}
	}
	s.zero += other.zero
	s.n += other.n
	s.skipped += other.skipped
	if other.min < s.min {
		s.min = other.min
	}
	if other.max > s.max {
		s.max = other.max
	}
	return nil
}

// ToMap returns the state with the keys of Python's QuantileSketch.to_dict(): relative_accuracy,
// max_bins, pos and neg (ascending [index, count] pairs), zero, count, min, max, skipped.
func (s *QuantileSketch) ToMap() map[string]any {
	return map[string]any{
		"relative_accuracy": s.a,
		"max_bins":          int64(s.maxBins),
		"pos":               s.pos.pairs(),
		"neg":               s.neg.pairs(),
		"zero":              s.zero,
		"count":             s.n,
		"min":               s.min,
		"max":               s.max,
		"skipped":           s.skipped,
	}
}

// QuantileSketchFromMap rebuilds a sketch from ToMap (or Python to_dict) output, as strictly
// as Python: bucket counts positive, zero/count/skipped non-negative within 64 bits, bucket
// indexes within ±2^61. Bucket lists may be [][]int64 or decoded msgpack ([]any of []any).
func QuantileSketchFromMap(state map[string]any) (*QuantileSketch, error) {
	s, err := quantileSketchFromMap(state)
	if err != nil {
		return nil, fmt.Errorf("herd: not a QuantileSketch state: %w", err)
	}
	return s, nil
}

func quantileSketchFromMap(state map[string]any) (*QuantileSketch, error) {
	a, err := stateFloat(state, "relative_accuracy")
	if err != nil {
		return nil, err
	}
	mb, ok := asInt64(state["max_bins"])
	if !ok {
		return nil, fmt.Errorf("max_bins must be an integer, not %T", state["max_bins"])
	}
	if mb < 1 || mb > MaxSketchBins {
		return nil, fmt.Errorf("max_bins must be between 1 and %d, not %d", MaxSketchBins, mb)
	}
	s, err := NewQuantileSketch(a, int(mb))
	if err != nil {
		return nil, err
	}
	for _, st := range []struct {
		key string
		b   *buckets
	}{{"pos", s.pos}, {"neg", s.neg}} {
		pairs, err := bucketPairs(state[st.key])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", st.key, err)
		}
		for _, p := range pairs {
			if p[1] < 1 {
				return nil, fmt.Errorf("bucket %d has count %d; counts must be positive", p[0], p[1])
			}
			if p[0] < -sketchIndexLimit || p[0] > sketchIndexLimit {
				return nil, fmt.Errorf("bucket index %d is out of range", p[0])
			}
			st.b.put(p[0], p[1])
		}
	}
	if s.zero, err = stateCount(state, "zero"); err != nil {
		return nil, err
	}
	if s.n, err = stateCount(state, "count"); err != nil {
		return nil, err
	}
	if s.min, err = stateFloat(state, "min"); err != nil {
		return nil, err
	}
	if s.max, err = stateFloat(state, "max"); err != nil {
		return nil, err
	}
	if s.skipped, err = stateCount(state, "skipped"); err != nil {
		return nil, err
	}
	return s, nil
}

func bucketPairs(v any) ([][2]int64, error) {
	switch x := v.(type) {
	case [][]int64:
		out := make([][2]int64, len(x))
		for i, p := range x {
			if len(p) != 2 {
				return nil, fmt.Errorf("pair %d has %d elements", i, len(p))
			}
			out[i] = [2]int64{p[0], p[1]}
		}
		return out, nil
	case []any:
		out := make([][2]int64, len(x))
		for i, p := range x {
			pair, ok := p.([]any)
			if !ok || len(pair) != 2 {
				return nil, fmt.Errorf("pair %d is not an [index, count] pair", i)
			}
			idx, ok1 := asInt64(pair[0])
			cnt, ok2 := asInt64(pair[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("pair %d must hold two integers", i)
			}
			out[i] = [2]int64{idx, cnt}
		}
		return out, nil
	case nil:
		return nil, errors.New("missing")
	}
	return nil, fmt.Errorf("must be a list of [index, count] pairs, not %T", v)
}
