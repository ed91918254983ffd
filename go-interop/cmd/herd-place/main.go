// Command herd-place prints where the herd's hash ring places keys, as JSON, so that other
// languages can check they agree: {"nodes": [...], "owners": [owner of key 0, ...]}.
//
//	herd-place -nodes a,b,c -n 10000 -format 'counter:k%d'
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	herd "github.com/herdrt/herdrt/go-interop"
)

func main() {
	nodes := flag.String("nodes", "", "comma-separated node names, in insertion order")
	n := flag.Int("n", 10000, "number of keys")
	format := flag.String("format", "key-%d", "key i is fmt.Sprintf(format, i)")
	vnodes := flag.Int("vnodes", herd.DefaultVnodes, "points per node")
	flag.Parse()
	ring, err := herd.NewHashRing(strings.Split(*nodes, ","), *vnodes, nil)
	if err != nil {
		log.Fatal(err)
	}
	owners := make([]string, *n)
	for i := range owners {
		if owners[i], err = ring.LookupString(fmt.Sprintf(*format, i)); err != nil {
			log.Fatal(err)
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"nodes": ring.Nodes(), "owners": owners}); err != nil {
		log.Fatal(err)
	}
}
