package pglogrepl

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// quietWindow is the receive low-water mark while capture coalesces: far more
// than a burst of WAL messages at a steady rate brings in a few milliseconds.
const quietWindow = 1 << 20

// quiet keeps the kernel from signalling each WAL message that arrives while
// capture sleeps to coalesce reads. The walsender sends every message on its
// own; without this each one wakes the Go runtime's network poller for
// nothing (no goroutine is reading), thousands of times a second at a
// steady rate. With SO_RCVLOWAT raised, TCP signals readability only once
// quietWindow bytes are waiting; reads themselves are not held back (a
// non-blocking read returns what is there), and the mark is lowered again
// before capture reads. A connection without a socket gets a no-op.
type quiet struct {
	raw syscall.RawConn // nil: not supported, do nothing
}

func newQuiet(c net.Conn) quiet {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return quiet{}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return quiet{}
	}
	return quiet{raw: raw}
}

// hush raises the low-water mark.
func (q *quiet) hush() { q.set(quietWindow) }

// speak lowers the low-water mark to one byte, the default, and returns how
// many bytes wait in the socket: what came in while it was hushed.
func (q *quiet) speak() int {
	q.set(1)
	if q.raw == nil {
		return 0
	}
	n := 0
	_ = q.raw.Control(func(fd uintptr) {
		n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	return n
}

func (q *quiet) set(n int) {
	if q.raw == nil {
		return
	}
	if setsockopt(q.raw, unix.SOL_SOCKET, unix.SO_RCVLOWAT, n) != nil {
		// Without the option capture only wakes more often: stop trying,
		// and make sure the mark is back at its default.
		if n != 1 {
			_ = setsockopt(q.raw, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
		}
		q.raw = nil
	}
}
