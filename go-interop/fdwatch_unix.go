//go:build unix

package herd

import (
	"os"
	"syscall"

	zmq "github.com/pebbe/zmq4"
)

// watchSocket returns the socket's ZMQ_FD as an *os.File that Go's network poller can wait on.
// The FD is duplicated: closing the file never closes libzmq's own descriptor.
func watchSocket(s *zmq.Socket) (*os.File, error) {
	fd, err := s.GetFd()
	if err != nil {
		return nil, err
	}
	dup, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return nil, errno
	}
	// libzmq's signaler FD is non-blocking (and the flag is shared by the duplicate), so
	// os.NewFile registers it with the poller.
	return os.NewFile(dup, "zmq-fd"), nil
}
