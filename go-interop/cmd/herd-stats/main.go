// Command herd-stats is an example Go service of a herd: it keeps an OnlineStats (the same
// Welford update and Chan merge as herdrt's compiled core) of the numbers it is told, and
// answers the asks "mean", "variance", "min", "max", "count" and "state" (the ToMap dict, as
// Python's OnlineStats.to_dict()). An ask with a number adds it and returns the new count; an
// ask {"merge": state} merges another OnlineStats state (e.g. a Python node's) into it.
//
//	herd-stats -endpoint tcp://127.0.0.1:13003 -service stats-go -names stats -secret-file secret.txt
package main

import (
	"context"
	"flag"
	"fmt"
	"log"

	herd "github.com/herdrt/herdrt/go-interop"
	"github.com/herdrt/herdrt/go-interop/internal/svcflags"
)

// statsActor is only touched by its handler, which the client runs one message at a time.
type statsActor struct {
	s herd.OnlineStats
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case int64:
		return float64(x), true
	case uint64:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

func (a *statsActor) receive(ctx context.Context, msg any) (any, error) {
	if x, ok := number(msg); ok {
		a.s.Update(x)
		return a.s.Count(), nil
	}
	if xs, ok := msg.([]any); ok { // a batch of numbers
		for _, v := range xs {
			if x, ok := number(v); ok {
				a.s.Update(x)
			}
		}
		return a.s.Count(), nil
	}
	if m, ok := msg.(map[string]any); ok {
		state, ok := m["merge"].(map[string]any)
		if !ok {
			return nil, &herd.RemoteError{Type: "ValueError", Message: `expected {"merge": state}`}
		}
		other, err := herd.OnlineStatsFromMap(state)
		if err != nil {
			return nil, &herd.RemoteError{Type: "ValueError", Message: err.Error()}
		}
		a.s.Merge(other)
		return a.s.Count(), nil
	}
	switch msg {
	case "mean":
		return a.s.Mean(), nil
	case "variance":
		return a.s.Variance(), nil
	case "min":
		return a.s.Min(), nil
	case "max":
		return a.s.Max(), nil
	case "count":
		return a.s.Count(), nil
	case "state":
		return a.s.ToMap(), nil
	case "reset":
		a.s.Reset()
		return true, nil
	}
	return nil, &herd.RemoteError{Type: "ValueError", Message: fmt.Sprintf("unknown request %v", msg)}
}

func main() {
	f := svcflags.Register(flag.CommandLine, "stats-go", "stats")
	flag.Parse()
	opts, err := f.Options()
	if err != nil {
		log.Fatal(err)
	}
	for _, name := range f.NameList() {
		a := &statsActor{} // one OnlineStats per name
		opts = append(opts, herd.WithHandler(name, a.receive))
	}
	ctx, stop := svcflags.UntilSignal()
	defer stop()
	c, err := svcflags.Dial(ctx, f.Endpoint, opts...)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("herd-stats: %s serves %v on node %s", c.Service(), f.NameList(), c.Node())
	<-ctx.Done()
	c.Close()
}
