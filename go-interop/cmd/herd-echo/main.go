// Command herd-echo is an example Go service of a herd: it takes actor names on a node's ZeroMQ
// bridge, answers every ask with the message it got, and counts the tells it receives (ask it
// "$tells" for the count).
//
//	herd-echo -endpoint tcp://127.0.0.1:13003 -service echo-go -names echo-go -secret-file secret.txt
package main

import (
	"context"
	"flag"
	"log"
	"sync/atomic"

	herd "github.com/herdrt/herdrt/go-interop"
	"github.com/herdrt/herdrt/go-interop/internal/svcflags"
)

func main() {
	f := svcflags.Register(flag.CommandLine, "echo-go", "echo-go")
	flag.Parse()
	opts, err := f.Options()
	if err != nil {
		log.Fatal(err)
	}
	var tells atomic.Int64
	echo := func(ctx context.Context, msg any) (any, error) {
		if msg == "$tells" {
			return tells.Load(), nil
		}
		return msg, nil
	}
	for _, name := range f.NameList() {
		opts = append(opts, herd.WithHandler(name, countTells(echo, &tells)))
	}
	ctx, stop := svcflags.UntilSignal()
	defer stop()
	c, err := svcflags.Dial(ctx, f.Endpoint, opts...)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("herd-echo: %s serves %v on node %s", c.Service(), f.NameList(), c.Node())
	<-ctx.Done()
	c.Close()
}

// countTells wraps h so that tells (messages whose result nobody reads) are counted. The
// client gives handlers no tell/ask flag, so the count is kept from the context instead.
func countTells(h herd.Handler, n *atomic.Int64) herd.Handler {
	return func(ctx context.Context, msg any) (any, error) {
		if !herd.IsAsk(ctx) {
			n.Add(1)
		}
		return h(ctx, msg)
	}
}
