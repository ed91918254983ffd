package herd

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"
)

type sketchParams struct {
	RelativeAccuracy float64 `json:"relative_accuracy"`
	MaxBins          int     `json:"max_bins"`
}

type statsExpect struct {
	Stats struct {
		Count   int64     `json:"count"`
		Mean    float64   `json:"mean"`
		M2      float64   `json:"m2"`
		Min     jsonFloat `json:"min"`
		Max     jsonFloat `json:"max"`
		Sum     float64   `json:"sum"`
		Skipped int64     `json:"skipped"`
	} `json:"stats"`
	Tolerance struct {
		Mean float64 `json:"mean"`
		M2   float64 `json:"m2"`
		Sum  float64 `json:"sum"`
	} `json:"tolerance"`
	Sketch    map[string]json.RawMessage `json:"sketch"`
	Quantiles [][2]jsonFloat             `json:"quantiles"`
}

type statsVectors struct {
	Format  []string `json:"format"`
	QRelTol float64  `json:"quantile_rel_tolerance"`
	Cases   []struct {
		Name    string       `json:"name"`
		Samples []jsonFloat  `json:"samples"`
		Sketch  sketchParams `json:"sketch"`
		Expect  statsExpect  `json:"expect"`
	} `json:"cases"`
	Merges []struct {
		Name   string       `json:"name"`
		A      string       `json:"a"`
		B      string       `json:"b"`
		Sketch sketchParams `json:"sketch"`
		Expect statsExpect  `json:"expect"`
	} `json:"merges"`
}

func loadStats(t *testing.T) statsVectors {
	var v statsVectors
	loadVectors(t, "stats.json", &v)
	// stats.json's "format" is its own description (a list of lines), not a version string.
	if len(v.Format) == 0 || !strings.HasPrefix(v.Format[0], "Golden vectors for herdrt's online statistics") {
		t.Fatalf("stats.json: unexpected format field %q", v.Format)
	}
	if len(v.Cases) == 0 || len(v.Merges) == 0 || v.QRelTol <= 0 {
		t.Fatal("stats.json: empty section")
	}
	return v
}

func floats(xs []jsonFloat) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = float64(x)
	}
	return out
}

func sameFloat(a, b float64) bool { return a == b || (math.IsNaN(a) && math.IsNaN(b)) }

func checkStats(t *testing.T, s *OnlineStats, e statsExpect) {
	t.Helper()
	w := e.Stats
	m := s.ToMap()
	if m["count"] != w.Count || m["skipped"] != w.Skipped {
		t.Errorf("count/skipped = %v/%v, want %d/%d", m["count"], m["skipped"], w.Count, w.Skipped)
	}
	if m["min"] != float64(w.Min) || m["max"] != float64(w.Max) {
		t.Errorf("min/max = %v/%v, want %v/%v", m["min"], m["max"], w.Min, w.Max)
	}
	for _, c := range []struct {
		name      string
		got, want float64
		tol       float64
	}{
		{"mean", s.mean, w.Mean, e.Tolerance.Mean},
		{"m2", s.m2, w.M2, e.Tolerance.M2},
		{"sum", s.sum, w.Sum, e.Tolerance.Sum},
	} {
		if math.Abs(c.got-c.want) > c.tol {
			t.Errorf("%s = %v, want %v within %v", c.name, c.got, c.want, c.tol)
		}
	}
	if w.Count == 0 {
		for name, x := range map[string]float64{"Mean": s.Mean(), "Variance": s.Variance(), "Stddev": s.Stddev(), "Min": s.Min(), "Max": s.Max()} {
			if !math.IsNaN(x) {
				t.Errorf("empty %s = %v, want NaN", name, x)
			}
		}
	} else if s.Mean() != s.mean || s.Min() != float64(w.Min) {
		t.Error("accessors disagree with the state")
	}
}

// checkSketch compares the sketch with the expected Python to_dict() exactly, and the quantiles
// within the vectors' relative tolerance.
func checkSketch(t *testing.T, s *QuantileSketch, e statsExpect, relTol float64) {
	t.Helper()
	var want struct {
		RA      float64   `json:"relative_accuracy"`
		MaxBins int       `json:"max_bins"`
		Pos     [][]int64 `json:"pos"`
		Neg     [][]int64 `json:"neg"`
		Zero    int64     `json:"zero"`
		Count   int64     `json:"count"`
		Min     jsonFloat `json:"min"`
		Max     jsonFloat `json:"max"`
		Skipped int64     `json:"skipped"`
	}
	raw, _ := json.Marshal(e.Sketch)
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if want.Pos == nil {
		want.Pos = [][]int64{}
	}
	if want.Neg == nil {
		want.Neg = [][]int64{}
	}
	m := s.ToMap()
	if m["relative_accuracy"] != want.RA || m["max_bins"] != int64(want.MaxBins) {
		t.Errorf("params %v %v", m["relative_accuracy"], m["max_bins"])
	}
	if !reflect.DeepEqual(m["pos"], want.Pos) {
		t.Errorf("pos buckets differ:\n got %v\nwant %v", m["pos"], want.Pos)
	}
	if !reflect.DeepEqual(m["neg"], want.Neg) {
		t.Errorf("neg buckets differ:\n got %v\nwant %v", m["neg"], want.Neg)
	}
	if m["zero"] != want.Zero || m["count"] != want.Count || m["skipped"] != want.Skipped {
		t.Errorf("zero/count/skipped = %v/%v/%v, want %d/%d/%d", m["zero"], m["count"], m["skipped"], want.Zero, want.Count, want.Skipped)
	}
	if m["min"] != float64(want.Min) || m["max"] != float64(want.Max) {
		t.Errorf("min/max = %v/%v, want %v/%v", m["min"], m["max"], want.Min, want.Max)
	}
	if len(e.Quantiles) == 0 {
		t.Fatal("no quantiles in the vector")
	}
	for _, qv := range e.Quantiles {
		q, wantV := float64(qv[0]), float64(qv[1])
		got, err := s.Quantile(q)
		if err != nil {
			t.Fatal(err)
		}
		if math.IsNaN(wantV) {
			if !math.IsNaN(got) {
				t.Errorf("quantile(%v) = %v, want NaN", q, got)
			}
			continue
		}
		if math.Abs(got-wantV) > relTol*math.Abs(wantV) {
			t.Errorf("quantile(%v) = %v, want %v", q, got, wantV)
		}
	}
}

func TestStatsVectorCases(t *testing.T) {
	v := loadStats(t)
	for _, c := range v.Cases {
		t.Run(c.Name, func(t *testing.T) {
			var s OnlineStats // the zero value is ready
			s.UpdateMany(floats(c.Samples))
			checkStats(t, &s, c.Expect)
			sk, err := NewQuantileSketch(c.Sketch.RelativeAccuracy, c.Sketch.MaxBins)
			if err != nil {
				t.Fatal(err)
			}
			sk.AddMany(floats(c.Samples))
			checkSketch(t, sk, c.Expect, v.QRelTol)

			// The states survive msgpack and come back identical.
			for _, st := range []map[string]any{s.ToMap(), sk.ToMap()} {
				body, err := Marshal(st)
				if err != nil {
					t.Fatal(err)
				}
				back, err := DecodeBody(body)
				if err != nil {
					t.Fatal(err)
				}
				m := back.(map[string]any)
				if _, ok := m["pos"]; ok {
					sk2, err := QuantileSketchFromMap(m)
					if err != nil {
						t.Fatal(err)
					}
					checkSketch(t, sk2, c.Expect, v.QRelTol)
				} else {
					s2, err := OnlineStatsFromMap(m)
					if err != nil {
						t.Fatal(err)
					}
					if *s2 != s && s.n > 0 {
						t.Errorf("OnlineStats round trip: %+v != %+v", *s2, s)
					}
					checkStats(t, s2, c.Expect)
				}
			}
		})
	}
}

func TestStatsVectorMerges(t *testing.T) {
	v := loadStats(t)
	samples := map[string][]float64{}
	for _, c := range v.Cases {
		samples[c.Name] = floats(c.Samples)
	}
	for _, m := range v.Merges {
		t.Run(m.Name, func(t *testing.T) {
			a, okA := samples[m.A]
			b, okB := samples[m.B]
			if !okA || !okB {
				t.Fatalf("merge of unknown cases %q, %q", m.A, m.B)
			}
			var sa, sb OnlineStats
			sa.UpdateMany(a)
			sb.UpdateMany(b)
			checkStats(t, sa.Merge(&sb), m.Expect)

			ka, _ := NewQuantileSketch(m.Sketch.RelativeAccuracy, m.Sketch.MaxBins)
			kb, _ := NewQuantileSketch(m.Sketch.RelativeAccuracy, m.Sketch.MaxBins)
			ka.AddMany(a)
			kb.AddMany(b)
			if err := ka.Merge(kb); err != nil {
				t.Fatal(err)
			}
			checkSketch(t, ka, m.Expect, v.QRelTol)

			// Merging a state that arrived from Python (the JSON to_dict of b) gives the same.
			for _, c := range v.Cases {
				if c.Name != m.B || c.Sketch != m.Sketch {
					continue
				}
				raw, _ := json.Marshal(c.Expect.Sketch)
				var st map[string]any
				_ = json.Unmarshal(raw, &st)
				fixJSONState(st)
				kp, err := QuantileSketchFromMap(st)
				if err != nil {
					t.Fatal(err)
				}
				kc, _ := NewQuantileSketch(m.Sketch.RelativeAccuracy, m.Sketch.MaxBins)
				kc.AddMany(a)
				if err := kc.Merge(kp); err != nil {
					t.Fatal(err)
				}
				checkSketch(t, kc, m.Expect, v.QRelTol)
			}
		})
	}
}

// fixJSONState turns encoding/json's float64 numbers and "Infinity" strings into what a msgpack
// decoder would hand over (integers as int64, doubles as float64).
func fixJSONState(st map[string]any) {
	for k, v := range st {
		switch x := v.(type) {
		case string:
			var f jsonFloat
			_ = f.UnmarshalJSON([]byte(`"` + x + `"`))
			st[k] = float64(f)
		case float64:
			if k != "relative_accuracy" && k != "min" && k != "max" {
				st[k] = int64(x)
			}
		case []any:
			for _, p := range x {
				pair := p.([]any)
				pair[0], pair[1] = int64(pair[0].(float64)), int64(pair[1].(float64))
			}
		}
	}
}

func TestOnlineStatsBehaviour(t *testing.T) {
	var s OnlineStats
	s.UpdateMany([]float64{2, 4, 4, 4, 5, 5, 7, 9, math.NaN(), math.Inf(-1)})
	if s.Count() != 8 || s.Skipped() != 2 || s.Mean() != 5 || s.Variance() != 4 || s.Stddev() != 2 {
		t.Errorf("got count %d skipped %d mean %v var %v", s.Count(), s.Skipped(), s.Mean(), s.Variance())
	}
	if math.Abs(s.SampleVariance()-32.0/7) > 1e-12 || s.Min() != 2 || s.Max() != 9 || s.Sum() != 40 {
		t.Errorf("sample variance %v min %v max %v sum %v", s.SampleVariance(), s.Min(), s.Max(), s.Sum())
	}
	// Merging into an empty one keeps both skip counts.
	var e OnlineStats
	e.Update(math.NaN())
	e.Merge(&s)
	if e.Count() != 8 || e.Skipped() != 3 || e.Mean() != 5 {
		t.Errorf("merge into empty: %+v", e)
	}
	c := e.Copy()
	c.Update(100)
	if e.Count() != 8 {
		t.Error("Copy is not independent")
	}
	e.Reset()
	if e.Count() != 0 || !math.IsNaN(e.Mean()) || e.ToMap()["min"] != math.Inf(1) {
		t.Errorf("after Reset: %+v", e.ToMap())
	}
	var one OnlineStats
	one.Update(3)
	if !math.IsNaN(one.SampleVariance()) {
		t.Error("sample variance of one sample must be NaN")
	}
	for _, bad := range []map[string]any{
		{},
		{"count": int64(-1), "skipped": int64(0), "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0, "sum": 0.0},
		{"count": 1.5, "skipped": int64(0), "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0, "sum": 0.0},
		{"count": uint64(math.MaxUint64), "skipped": int64(0), "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0, "sum": 0.0},
		{"count": int64(1), "skipped": int64(0), "mean": "x", "m2": 0.0, "min": 0.0, "max": 0.0, "sum": 0.0},
		{"count": true, "skipped": int64(0), "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0, "sum": 0.0},
	} {
		if _, err := OnlineStatsFromMap(bad); err == nil {
			t.Errorf("OnlineStatsFromMap(%v) must fail", bad)
		}
	}
}

func TestQuantileSketchBehaviour(t *testing.T) {
	for _, p := range []struct {
		a float64
		n int
	}{{0, 10}, {1, 10}, {math.NaN(), 10}, {0.01, 0}, {0.01, MaxSketchBins + 1}} {
		if _, err := NewQuantileSketch(p.a, p.n); err == nil {
			t.Errorf("NewQuantileSketch(%v, %d) must fail", p.a, p.n)
		}
	}
	s, _ := NewQuantileSketch(DefaultRelativeAccuracy, DefaultMaxBins)
	if q, err := s.Quantile(0.5); err != nil || !math.IsNaN(q) {
		t.Errorf("empty quantile = %v, %v", q, err)
	}
	for i := 1; i <= 1000; i++ {
		s.Add(float64(i))
	}
	s.Add(math.Inf(1))
	for _, q := range []float64{0.1, 0.5, 0.9, 0.99} {
		got, _ := s.Quantile(q)
		exact := 1 + q*999 // rank q*(n-1), lower
		if math.Abs(got-math.Floor(exact))/exact > 0.011 {
			t.Errorf("quantile(%v) = %v, true about %v", q, got, math.Floor(exact))
		}
	}
	if _, err := s.Quantile(1.5); err == nil {
		t.Error("q > 1 must fail")
	}
	if s.Skipped() != 1 || s.Count() != 1000 {
		t.Errorf("skipped %d count %d", s.Skipped(), s.Count())
	}
	other, _ := NewQuantileSketch(0.02, DefaultMaxBins)
	if err := s.Merge(other); err != ErrSketchMismatch {
		t.Errorf("merging different accuracies: %v", err)
	}
	good := func() map[string]any { return s.ToMap() }
	for name, mutate := range map[string]func(map[string]any){
		"zero count":   func(m map[string]any) { m["pos"] = [][]int64{{1, 0}} },
		"index range":  func(m map[string]any) { m["pos"] = [][]int64{{1 << 62, 1}} },
		"bad pair":     func(m map[string]any) { m["neg"] = []any{[]any{int64(1)}} },
		"negative":     func(m map[string]any) { m["zero"] = int64(-1) },
		"max_bins":     func(m map[string]any) { m["max_bins"] = int64(0) },
		"missing pos":  func(m map[string]any) { delete(m, "pos") },
		"accuracy str": func(m map[string]any) { m["relative_accuracy"] = "0.01" },
	} {
		m := good()
		mutate(m)
		if _, err := QuantileSketchFromMap(m); err == nil {
			t.Errorf("%s: QuantileSketchFromMap must fail", name)
		}
	}
	back, err := QuantileSketchFromMap(good())
	if err != nil || !reflect.DeepEqual(back.ToMap(), s.ToMap()) {
		t.Errorf("round trip: %v", err)
	}
}

// With a tiny window the lowest buckets fold into the window's floor, as in Python.
func TestQuantileSketchCollapse(t *testing.T) {
	s, _ := NewQuantileSketch(0.01, 3)
	for _, x := range []float64{1, 2, 4, 8, 16} {
		s.Add(x)
	}
	// Indexes 0, 35, 70, 104, 139: the window is [137, 139], so the four lowest fold into 137
	// (Python's to_dict gives [[137, 4], [139, 1]]).
	top := s.index(16)
	want := [][]int64{{top - 2, 4}, {top, 1}}
	if pos := s.ToMap()["pos"]; !reflect.DeepEqual(pos, want) || top != 139 {
		t.Errorf("pos = %v, want %v", pos, want)
	}
}
