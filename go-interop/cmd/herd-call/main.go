// Command herd-call joins a herd as a Go service for one call, prints the result as JSON and
// leaves: a tell, an ask, or a small benchmark (used by tests/test_interop.py and
// bench/bench_interop.py).
//
//	herd-call [common flags] ask echo@B '{"k": 1}'      -> {"ok": true, "value": ...}
//	herd-call [common flags] tell sink@B '"x"'
//	herd-call [common flags] bench-tell sink@B 100000   -> {"n": ..., "seconds": ...}
//	herd-call [common flags] bench-ask echo@B 10000     -> {"n": ..., "seconds": ...}
//
// Messages are JSON; integral numbers become integers. A failed ask prints {"ok": false,
// "type": ..., "message": ...} and exits 1; a refused connection exits 2.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strconv"
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
	if len(args) < 2 {
		log.Fatal("usage: herd-call [flags] ask|tell|bench-tell|bench-ask TARGET [MESSAGE|N]")
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
		start := time.Now()
		if op == "bench-tell" {
			for i := 0; i < n; i++ {
				if err := c.Tell(target, int64(i)); err != nil {
					log.Fatal(err)
				}
			}
			// an ask behind the tells: they are all through the bridge when it returns
			// (FIFO per sender-receiver pair)
			if _, err := c.Ask(context.Background(), target, "$count"); err != nil {
				log.Fatal(err)
			}
		} else {
			sem := make(chan struct{}, *window)
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
				log.Fatal(err)
			default:
			}
		}
		out(map[string]any{"n": n, "seconds": time.Since(start).Seconds()})
	default:
		log.Fatalf("unknown operation %q", op)
	}
}
