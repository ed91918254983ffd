//go:build !unix

package herd

import (
	"errors"
	"os"

	zmq "github.com/pebbe/zmq4"
)

// watchSocket is not available here: the client polls its sockets on a short timer instead.
func watchSocket(s *zmq.Socket) (*os.File, error) {
	return nil, errors.New("herd: no ZMQ_FD polling on this platform")
}
