package host

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// remote is a sink in a plugin process.
type remote struct {
	client interface {
		Exited() bool
		Kill()
	} // the plugin process: a *plugin.Client
	rpc  *sdk.Client
	st   *sdk.Stream // of batches: opened by the first Send, ended by a failure
	logs io.Closer   // the pipe that carries the plugin's log lines; nil in tests
}

// command is how to start one plugin process.
type command struct {
	sink string   // the sink's name, for messages
	path string   // the binary as configured, or the built-in's name
	argv []string // what runs: the binary, or this one serving a built-in
	env  []string // the process's whole environment (see pluginEnv)
	// external binaries are checked: ownership and mode, and sha256 when set.
	external bool
	sha256   []byte
}

// launch starts a plugin process and completes the handshake. Every failure
// names the plugin and says what to do.
func launch(ctx context.Context, c command, log *slog.Logger) (*remote, error) {
	if c.external {
		if err := checkOwnership(c.path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("sink %q: cannot run plugin %s: %w (check the sink's plugin: a built-in name or the path of an executable)", c.sink, c.path, err)
			}
			return nil, fmt.Errorf("sink %q: refusing to run plugin %s: %w", c.sink, c.path, err)
		}
	}
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = c.env
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // a Ctrl-C to pgtrail must not kill the sink before it drains
		Pdeathsig: syscall.SIGKILL, // and a killed pgtrail must not leave it behind
	}
	var secure *plugin.SecureConfig
	if c.sha256 != nil {
		secure = &plugin.SecureConfig{Checksum: c.sha256, Hash: sha256.New()}
	}
	logger, logs := pluginLogger(log.With("sink", c.sink))
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  sdk.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{sdk.ProtocolVersion: {sdk.PluginName: &sdk.GRPCPlugin{}}},
		Cmd:              cmd,
		SkipHostEnv:      true, // cmd.Env is all it gets
		SecureConfig:     secure,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Managed:          true,
		StartTimeout:     30 * time.Second,
		Logger:           logger,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(sdk.MaxMessageBytes), grpc.MaxCallSendMsgSize(sdk.MaxMessageBytes))},
	})
	r := &remote{client: client, logs: logs}
	rpcClient, err := client.Client()
	if err != nil {
		r.Kill()
		return nil, explainLaunch(c, err)
	}
	raw, err := rpcClient.Dispense(sdk.PluginName)
	if err != nil {
		r.Kill()
		return nil, fmt.Errorf("sink %q: plugin %s serves no sink: %w (is it built with pgtrail's plugins/sdk.Serve?)", c.sink, c.path, err)
	}
	r.rpc = raw.(*sdk.Client)
	return r, nil
}

func explainLaunch(c command, err error) error {
	name, path := c.sink, c.path
	msg := err.Error()
	switch lower := strings.ToLower(msg); {
	case errors.Is(err, plugin.ErrChecksumsDoNotMatch):
		return fmt.Errorf("sink %q: refusing to run plugin %s: its sha256 is %s, not the %x that sinks[].sha256 gives: if the plugin was updated on purpose, set sha256 to its new sum (sha256sum %s); otherwise find out who changed it",
			name, path, fileSHA256(path), c.sha256, path)
	case strings.Contains(lower, "incompatible api version"):
		return fmt.Errorf("sink %q: plugin %s speaks another sink protocol version than this pgtrail (%d): rebuild the plugin against this release's plugins/sdk, or run the pgtrail release it was built for (%s)",
			name, path, sdk.ProtocolVersion, firstLine(msg))
	case strings.Contains(lower, "unrecognized remote plugin message"), strings.Contains(lower, "exited before we could connect"),
		strings.Contains(lower, "timeout while waiting for plugin"):
		return fmt.Errorf("sink %q: %s is not a pgtrail sink plugin: it did not answer the plugin handshake (check the sink's plugin: a built-in name or the path of a binary built with plugins/sdk): %s",
			name, path, firstLine(msg))
	case errors.Is(err, exec.ErrNotFound), strings.Contains(msg, "no such file"), strings.Contains(msg, "permission denied"):
		return fmt.Errorf("sink %q: cannot run plugin %s: %w (check the sink's plugin: a built-in name or the path of an executable)", name, path, err)
	}
	return fmt.Errorf("sink %q: start plugin %s: %w", name, path, err)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func (r *remote) Describe(ctx context.Context) (sdk.Description, error) { return r.rpc.Describe(ctx) }
func (r *remote) Configure(ctx context.Context, raw json.RawMessage) error {
	return plain(r.rpc.Configure(ctx, raw))
}
func (r *remote) Setup(ctx context.Context) error    { return plain(r.rpc.Setup(ctx)) }
func (r *remote) Teardown(ctx context.Context) error { return plain(r.rpc.Teardown(ctx)) }
func (r *remote) Open(ctx context.Context) error     { return plain(r.rpc.Open(ctx)) }
func (r *remote) Check(ctx context.Context) error    { return plain(r.rpc.Check(ctx)) }
func (r *remote) Close(ctx context.Context) error {
	r.endStream()
	return plain(r.rpc.Close(ctx))
}

func (r *remote) Send(_ context.Context, seq uint64, batch []*change.Change, flush bool) error {
	if r.st == nil {
		// The stream outlives the calls that use it; Close or a failure ends it.
		st, err := r.rpc.Deliver(context.Background())
		if err != nil {
			return plain(err)
		}
		r.st = st
	}
	var err error
	if flush {
		err = r.st.Flush(seq)
	} else {
		err = r.st.Send(seq, batch)
	}
	if err != nil {
		r.endStream()
	}
	return plain(err)
}

func (r *remote) Wait(ctx context.Context, taken, durable uint64) (uint64, error) {
	if r.st == nil {
		return 0, errors.New("no batch stream is open")
	}
	upTo, err := r.st.Wait(ctx, taken, durable)
	if err != nil && ctx.Err() == nil {
		r.endStream()
	}
	return upTo, plain(err)
}

func (r *remote) endStream() {
	if r.st != nil {
		r.st.Close()
		r.st = nil
	}
}

// Lost is true when the plugin process is gone or no longer answers, as
// opposed to a sink that answered with an error.
func (r *remote) Lost(err error) bool {
	if r.client.Exited() {
		return true
	}
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		c := st.GRPCStatus().Code()
		return c == codes.Unavailable
	}
	return false
}

// Kill ends the plugin process and then its log pipe, whose reader would
// otherwise wait forever.
func (r *remote) Kill() {
	r.client.Kill()
	if r.logs != nil {
		r.logs.Close()
	}
}

func (r *remote) Exited() bool { return r.client.Exited() }

// plain turns a sink's own error, which crossed the process boundary as a
// gRPC status, back into its message, so users read what the sink said.
func plain(err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unknown {
		return errors.New(st.Message())
	}
	return err
}

// pluginLogger forwards go-plugin's log, including each line the plugin
// writes to stderr, into pgtrail's log under the sink's name, until the
// returned pipe is closed.
func pluginLogger(log *slog.Logger) (hclog.Logger, io.Closer) {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			forward(log, sc.Bytes())
		}
	}()
	return hclog.New(&hclog.LoggerOptions{Output: pw, JSONFormat: true, Level: hclog.Debug}), pw
}

// forward re-emits one hclog JSON line through slog.
func forward(log *slog.Logger, line []byte) {
	var rec map[string]any
	if json.Unmarshal(line, &rec) != nil {
		log.Info(string(line))
		return
	}
	msg, _ := rec["@message"].(string)
	level := slog.LevelInfo
	switch rec["@level"] {
	case "trace", "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	attrs := make([]any, 0, 2*len(rec))
	for k, v := range rec {
		if !strings.HasPrefix(k, "@") {
			attrs = append(attrs, k, v)
		}
	}
	log.Log(context.Background(), level, msg, attrs...)
}
