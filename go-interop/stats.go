package herd

import (
	"fmt"
	"math"
)

// OnlineStats holds the count, mean, variance, min, max and sum of a stream in O(1) memory
// (Welford's algorithm), mergeable across goroutines, nodes and languages (Chan et al.): a
// state from Python's OnlineStats.to_dict() merges with one built here. Non-finite samples
// (NaN, ±Inf) are not folded in but counted in Skipped. With no samples, Mean, Variance,
// Stddev, Min and Max are NaN.
//
// The zero value is an empty, ready-to-use OnlineStats. It is not safe for concurrent use.
type OnlineStats struct {
	n       int64
	mean    float64
	m2      float64
	min     float64 // meaningful only when n > 0
	max     float64
	sum     float64
	skipped int64
}

func finite(x float64) bool { return x-x == 0 } // false for NaN and ±Inf, as in _pure

// Reset forgets every sample.
func (s *OnlineStats) Reset() { *s = OnlineStats{} }

// Update adds one sample.
func (s *OnlineStats) Update(x float64) {
	if !finite(x) {
		s.skipped++
		return
	}
	s.n++
	if s.n == 1 {
		s.min, s.max = x, x
	}
	delta := x - s.mean
	// The explicit float64 conversions forbid fused multiply-adds, so the rounding is the same
	// as Python's on every architecture.
	s.mean = s.mean + float64(delta/float64(s.n))
	s.m2 = s.m2 + float64(delta*(x-s.mean))
	s.sum += x
	if x < s.min {
		s.min = x
	}
	if x > s.max {
		s.max = x
	}
}

// UpdateMany adds every sample of xs, in order.
func (s *OnlineStats) UpdateMany(xs []float64) {
	for _, x := range xs {
		s.Update(x)
	}
}

// Merge folds other into s (Chan et al.); the result equals one OnlineStats fed both streams,
// within float rounding. It returns s.
func (s *OnlineStats) Merge(other *OnlineStats) *OnlineStats {
	nb := other.n
	s.skipped += other.skipped
	if nb == 0 {
		return s
	}
	na := s.n
	if na == 0 {
		skipped := s.skipped
		*s = *other
		s.skipped = skipped
		return s
	}
	n := na + nb
	fa, fb, fn := float64(na), float64(nb), float64(n)
	delta := other.mean - s.mean
	s.mean = s.mean + float64(delta*fb/fn)
	s.m2 = s.m2 + (other.m2 + float64(delta*delta*fa*fb/fn)) // Python: m2 += other.m2 + ...
	s.n = n
	s.sum += other.sum
	if other.min < s.min {
		s.min = other.min
	}
	if other.max > s.max {
		s.max = other.max
	}
	return s
}

// Copy returns an independent copy.
func (s *OnlineStats) Copy() *OnlineStats {
	c := *s
	return &c
}

// Count is the number of finite samples folded in.
func (s *OnlineStats) Count() int64 { return s.n }

// Skipped is the number of non-finite samples refused.
func (s *OnlineStats) Skipped() int64 { return s.skipped }

// Mean is the arithmetic mean (NaN when empty).
func (s *OnlineStats) Mean() float64 {
	if s.n == 0 {
		return math.NaN()
	}
	return s.mean
}

// Variance is the population variance (NaN when empty).
func (s *OnlineStats) Variance() float64 {
	if s.n == 0 {
		return math.NaN()
	}
	return s.m2 / float64(s.n)
}

// SampleVariance is the Bessel-corrected variance (NaN below two samples).
func (s *OnlineStats) SampleVariance() float64 {
	if s.n < 2 {
		return math.NaN()
	}
	return s.m2 / float64(s.n-1)
}

// Stddev is the population standard deviation (NaN when empty).
func (s *OnlineStats) Stddev() float64 { return math.Sqrt(s.Variance()) }

// Min is the smallest sample (NaN when empty).
func (s *OnlineStats) Min() float64 {
	if s.n == 0 {
		return math.NaN()
	}
	return s.min
}

// Max is the largest sample (NaN when empty).
func (s *OnlineStats) Max() float64 {
	if s.n == 0 {
		return math.NaN()
	}
	return s.max
}

// Sum is the sum of the samples (0 when empty).
func (s *OnlineStats) Sum() float64 { return s.sum }

// M2 is the sum of squared deviations from the mean (the raw Welford state).
func (s *OnlineStats) M2() float64 { return s.m2 }

// ToMap returns the state with the keys of Python's OnlineStats.to_dict(): count, mean, m2,
// min, max, sum, skipped. Empty: mean = m2 = sum = 0, min = +Inf, max = -Inf. It is
// msgpack-ready (Encode / Marshal) and FromMap restores it exactly.
func (s *OnlineStats) ToMap() map[string]any {
	lo, hi := s.min, s.max
	if s.n == 0 {
		lo, hi = math.Inf(1), math.Inf(-1)
	}
	return map[string]any{
		"count":   s.n,
		"mean":    s.mean,
		"m2":      s.m2,
		"min":     lo,
		"max":     hi,
		"sum":     s.sum,
		"skipped": s.skipped,
	}
}

// OnlineStatsFromMap rebuilds an OnlineStats from ToMap (or Python to_dict) output, e.g. a
// decoded msgpack map received from another node. count and skipped must be non-negative
// integers within 64 bits; the other fields numbers.
func OnlineStatsFromMap(state map[string]any) (*OnlineStats, error) {
	n, err := stateCount(state, "count")
	if err != nil {
		return nil, fmt.Errorf("herd: not an OnlineStats state: %w", err)
	}
	skipped, err := stateCount(state, "skipped")
	if err != nil {
		return nil, fmt.Errorf("herd: not an OnlineStats state: %w", err)
	}
	var f [5]float64
	for i, k := range [5]string{"mean", "m2", "min", "max", "sum"} {
		if f[i], err = stateFloat(state, k); err != nil {
			return nil, fmt.Errorf("herd: not an OnlineStats state: %w", err)
		}
	}
	return &OnlineStats{n: n, skipped: skipped, mean: f[0], m2: f[1], min: f[2], max: f[3], sum: f[4]}, nil
}

// asInt64 accepts every Go integer type a msgpack decoder may produce (not bool, not float).
func asInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint:
		return int64(x), uint64(x) <= math.MaxInt64
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		return int64(x), x <= math.MaxInt64
	}
	return 0, false
}

// asFloat64 accepts floats and integers (as Python's float() does), not bool.
func asFloat64(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case uint64:
		return float64(x), true
	case uint:
		return float64(x), true
	}
	if i, ok := asInt64(v); ok {
		return float64(i), true
	}
	return 0, false
}

func stateCount(state map[string]any, key string) (int64, error) {
	v, ok := state[key]
	if !ok {
		return 0, fmt.Errorf("missing %q", key)
	}
	n, ok := asInt64(v)
	if !ok || n < 0 {
		return 0, fmt.Errorf("%q must be a non-negative integer within 64 bits, not %v (%T)", key, v, v)
	}
	return n, nil
}

func stateFloat(state map[string]any, key string) (float64, error) {
	v, ok := state[key]
	if !ok {
		return 0, fmt.Errorf("missing %q", key)
	}
	f, ok := asFloat64(v)
	if !ok {
		return 0, fmt.Errorf("%q must be a number, not %T", key, v)
	}
	return f, nil
}
