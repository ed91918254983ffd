// Package svcflags holds the command-line flags the example services share: where the bridge is,
// who the service is, and how it authenticates (herd secret or CURVE keys).
package svcflags

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	herd "github.com/herdrt/herdrt/go-interop"
)

// Flags are the parsed common flags.
type Flags struct {
	Endpoint, Service, Names, Secret, SecretFile string
	CurveServer, CurvePublic, CurveSecret        string
	Heartbeat                                    time.Duration
}

// Register adds the common flags to fs with the given defaults.
func Register(fs *flag.FlagSet, service, names string) *Flags {
	f := &Flags{}
	fs.StringVar(&f.Endpoint, "endpoint", "tcp://127.0.0.1:13003", "the bridge's ROUTER (tcp://host:bridge_port)")
	fs.StringVar(&f.Service, "service", service, "service name (a reconnect under the same name replaces the old registration)")
	fs.StringVar(&f.Names, "names", names, "comma-separated actor names to take on the bridge's node")
	fs.StringVar(&f.Secret, "secret", "", "the herd's shared secret (prefer -secret-file or HERDRT_SECRET)")
	fs.StringVar(&f.SecretFile, "secret-file", "", "file holding the herd's shared secret")
	fs.StringVar(&f.CurveServer, "curve-server-key", "", "the bridge's CURVE public key (Z85); turns CURVE on")
	fs.StringVar(&f.CurvePublic, "curve-public-key", "", "this service's CURVE public key (Z85)")
	fs.StringVar(&f.CurveSecret, "curve-secret-key", "", "this service's CURVE secret key (Z85), or @FILE to read it")
	fs.DurationVar(&f.Heartbeat, "heartbeat", 0, "heartbeat interval (default: the node's)")
	return f
}

// NameList is -names split on commas.
func (f *Flags) NameList() []string {
	var out []string
	for _, n := range strings.Split(f.Names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

func readKey(v string) (string, error) {
	// A z85 key is exactly 40 characters, and '@' is one of them: only other values are "@file".
	if len(v) == 40 || !strings.HasPrefix(v, "@") {
		return v, nil
	}
	b, err := os.ReadFile(v[1:])
	return strings.TrimSpace(string(b)), err
}

// Options turns the flags into Dial options (the handlers come separately).
func (f *Flags) Options() ([]herd.Option, error) {
	opts := []herd.Option{herd.WithService(f.Service)}
	secret := f.Secret
	if f.SecretFile != "" {
		b, err := os.ReadFile(f.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("-secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if secret == "" {
		secret = os.Getenv("HERDRT_SECRET")
	}
	if secret != "" {
		opts = append(opts, herd.WithSecret([]byte(secret)))
	}
	if f.CurveServer != "" {
		server, err1 := readKey(f.CurveServer)
		pub, err2 := readKey(f.CurvePublic)
		sec, err3 := readKey(f.CurveSecret)
		for _, err := range []error{err1, err2, err3} {
			if err != nil {
				return nil, fmt.Errorf("CURVE key: %w", err)
			}
		}
		opts = append(opts, herd.WithCurve(server, pub, sec))
	}
	if secret == "" && f.CurveServer == "" {
		return nil, fmt.Errorf("give the herd secret (-secret-file, -secret, HERDRT_SECRET) or CURVE keys")
	}
	if f.Heartbeat > 0 {
		opts = append(opts, herd.WithHeartbeat(f.Heartbeat))
	}
	return opts, nil
}

// Dial dials the bridge until it answers (a service may start before its node), giving up on
// a refusal (a *herd.BridgeError: wrong secret or keys, a name taken) or when ctx ends.
func Dial(ctx context.Context, endpoint string, opts ...herd.Option) (*herd.Client, error) {
	for {
		c, err := herd.Dial(ctx, endpoint, opts...)
		if err == nil {
			return c, nil
		}
		var be *herd.BridgeError
		if errors.As(err, &be) || ctx.Err() != nil {
			return nil, err
		}
		log.Printf("bridge %s not ready (%v); retrying", endpoint, err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// UntilSignal returns a context cancelled by SIGINT or SIGTERM.
func UntilSignal() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
