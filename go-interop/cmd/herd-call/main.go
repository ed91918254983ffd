// Command herd-call joins a herd as a Go service for one call, prints the result as JSON and
// leaves: a tell, an ask, or a small benchmark (used by tests/test_interop.py and
// bench/bench_interop.py).
//
//	herd-call [common flags] ask echo@B '{"k": 1}'      -> {"ok": true, "value": ...}
//	herd-call [common flags] tell sink@B '"x"'
//	herd-call [common flags] bench-tell sink@B 100000   -> {"n": ..., "seconds": ...}
//	herd-call [common flags] bench-ask echo@B 10000     -> {"n": ..., "seconds": ...}
//	herd-call [common flags] bench-loop                  (commands on stdin, one JSON line each)
//
// bench-loop keeps one connection for many rounds: each stdin line "tell TARGET N" or
// "ask TARGET N" runs one round as bench-tell or bench-ask and prints its result (plus the
// client's tell batches), so a benchmark can time rounds without process start-up.
//
// Messages are JSON; integral numbers become integers. A failed ask prints {"ok": false,
// "type": ..., "message": ...} and exits 1; a refused connection exits 2.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	herd "github.com/herdrt/herdrt/go-interop"
	"github.com/herdrt/herdrt/go-interop/internal/svcflags"
)

// fromJSON turns decoded JSON into the herd's types (json.Number -> int64 or float64).
func fromJSON(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = fromJSON(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = fromJSON(x[k])
		}
	}
	return v
}

func parse(s string) any {
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		log.Fatalf("message %q is not JSON: %v", s, err)
	}
	return fromJSON(v)
}

// toJSON makes a reply printable ([]byte as a string).
func toJSON(v any) any {
	switch x := v.(type) {
	case []byte:
		return string(x)
	case []any:
		for i := range x {
			x[i] = toJSON(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = toJSON(x[k])
		}
	}
	return v
}

func out(v any) {
	json.NewEncoder(os.Stdout).Encode(v)
}

func main() {
	f := svcflags.Register(flag.CommandLine, fmt.Sprintf("call-%d", os.Getpid()), "")
	timeout := flag.Duration("timeout", 10*time.Second, "connect and ask timeout")
	window := flag.Int("window", 1, "bench-ask: asks in flight at once (1: sequential round trips)")
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 && !(len(args) == 1 && args[0] == "bench-loop") {
		log.Fatal("usage: herd-call [flags] ask|tell|bench-tell|bench-ask TARGET [MESSAGE|N] | bench-loop")
	}
	opts, err := f.Options()
	if err != nil {
		log.Fatal(err)
	}
	opts = append(opts, herd.WithAskTimeout(*timeout))
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	c, err := herd.Dial(ctx, f.Endpoint, opts...)
	cancel()
	if err != nil {
		var be *herd.BridgeError
		if errors.As(err, &be) {
			out(map[string]any{"refused": be.Code, "message": be.Message})
		} else {
			out(map[string]any{"refused": "unavailable", "message": err.Error()})
		}
		os.Exit(2)
	}
	defer c.Close()
	if args[0] == "bench-loop" {
		benchLoop(c, *window)
		return
	}
	op, target := args[0], args[1]
	msg := any(nil)
	if len(args) > 2 {
		msg = args[2]
	}
	switch op {
	case "ask":
		v, err := c.Ask(context.Background(), target, parse(msg.(string)))
		if err != nil {
			var re *herd.RemoteError
			if errors.As(err, &re) {
				out(map[string]any{"ok": false, "type": re.Type, "message": re.Message})
			} else {
				out(map[string]any{"ok": false, "type": "local", "message": err.Error()})
			}
			c.Close()
			os.Exit(1)
		}
		out(map[string]any{"ok": true, "value": toJSON(v)})
	case "tell":
		if err := c.Tell(target, parse(msg.(string))); err != nil {
			log.Fatal(err)
		}
	case "bench-tell", "bench-ask":
		n, err := strconv.Atoi(fmt.Sprint(msg))
		if err != nil {
			log.Fatal("N must be an integer")
		}
		seconds, err := benchRound(c, op == "bench-tell", target, n, *window)
		if err != nil {
			log.Fatal(err)
		}
		out(map[string]any{"n": n, "seconds": seconds})
	default:
		log.Fatalf("unknown operation %q", op)
	}
}

// benchRound tells n numbers to target (then one ask behind them, which returns once they are
// all through the bridge: FIFO per sender-receiver pair), or asks it n times, window in flight.
func benchRound(c *herd.Client, tells bool, target string, n, window int) (float64, error) {
	start := time.Now()
	if tells {
		for i := 0; i < n; i++ {
			if err := c.Tell(target, int64(i)); err != nil {
				return 0, err
			}
		}
		if _, err := c.Ask(context.Background(), target, "$count"); err != nil {
			return 0, err
		}
		return time.Since(start).Seconds(), nil
	}
	if window <= 1 {
		for i := 0; i < n; i++ {
			if _, err := c.Ask(context.Background(), target, int64(i)); err != nil {
				return 0, err
			}
		}
		return time.Since(start).Seconds(), nil
	}
	sem := make(chan struct{}, window)
	errs := make(chan error, 1)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem }()
			if _, err := c.Ask(context.Background(), target, int64(i)); err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}(i)
	}
	for i := 0; i < cap(sem); i++ {
		sem <- struct{}{}
	}
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return time.Since(start).Seconds(), nil
}

// benchLoop runs the rounds stdin asks for ("tell TARGET N" / "ask TARGET N") until EOF.
func benchLoop(c *herd.Client, window int) {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 3 || (f[0] != "tell" && f[0] != "ask") {
			out(map[string]any{"error": fmt.Sprintf("bad command %q: want tell|ask TARGET N", in.Text())})
			continue
		}
		n, err := strconv.Atoi(f[2])
		if err != nil {
			out(map[string]any{"error": "N must be an integer"})
			continue
		}
		before := c.Stats()
		seconds, err := benchRound(c, f[0] == "tell", f[1], n, window)
		if err != nil {
			out(map[string]any{"error": err.Error()})
			continue
		}
		after := c.Stats()
		out(map[string]any{"n": n, "seconds": seconds, "tell_batches": after.TellBatches - before.TellBatches})
	}
}
