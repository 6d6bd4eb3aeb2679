package pglogrepl

import (
	"context"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

const (
	// connectTimeout bounds each connection attempt whose URL sets no
	// connect_timeout: a server behind a cut network would otherwise keep
	// a connect waiting through minutes of TCP retries.
	connectTimeout = 10 * time.Second
	// tcpUserTimeout makes the kernel end a connection whose sent data
	// stays unacknowledged this long, and keepalive probes find a peer that
	// vanished while the connection was idle: both catch a cut that never
	// sends a reset. Capture's own receive_timeout usually acts first.
	tcpUserTimeout = 60 * time.Second
)

// connConfig parses a URL into the config every connection of capture uses.
func connConfig(url string) (*pgx.ConnConfig, error) {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	harden(&cc.Config)
	return cc, nil
}

// harden bounds connecting and sets the socket options of dial.
func harden(c *pgconn.Config) {
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = connectTimeout
	}
	c.DialFunc = dial
}

func dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	if network == "tcp" || network == "tcp4" || network == "tcp6" {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return setsockopt(c, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(tcpUserTimeout/time.Millisecond))
		}
	}
	return d.DialContext(ctx, network, addr)
}

func setsockopt(raw syscall.RawConn, level, opt, value int) error {
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), level, opt, value)
	}); err != nil {
		return err
	}
	return serr
}
