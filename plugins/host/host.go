// Package host runs the sinks named in the config and presents each to the
// pipeline. A sink runs in its own process behind the gRPC contract of
// plugins/proto (built-in sinks are this binary re-executed), so a crashing
// or misbehaving sink cannot corrupt the pipeline: the host restarts it and
// re-delivers every batch it had not yet made durable.
package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/retry"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// Builtins maps a built-in plugin name to its constructor.
type Builtins map[string]func() sdk.Sink

// Names lists the built-in plugins, sorted.
func (b Builtins) Names() []string {
	names := make([]string, 0, len(b))
	for n := range b {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Options say how to reach sinks.
type Options struct {
	Builtins Builtins
	// Self is the command that serves a built-in sink as a plugin: this
	// binary and the arguments of its hidden serve command, to which the
	// plugin name is appended.
	Self []string
	// BuiltinEnv names, by built-in plugin, the environment variables it
	// reads (like AWS_* for S3) beyond those every plugin gets (see baseEnv).
	BuiltinEnv map[string][]string
	Log        *slog.Logger
	// Restarted, when set, is called each time a sink's plugin process is
	// started again after the first start.
	Restarted func(sink string)
	// Health is told when a sink's process fails and when it is back.
	Health func(component string, err error)
}

// backend is one way of reaching a sink: in this process or in a plugin
// process. Batches are numbered from 1 for each backend.
type backend interface {
	Describe(ctx context.Context) (sdk.Description, error)
	Configure(ctx context.Context, raw json.RawMessage) error
	Setup(ctx context.Context) error
	Teardown(ctx context.Context) error
	Open(ctx context.Context) error
	Check(ctx context.Context) error
	// Send hands batch seq over or, with flush, asks that every batch up to
	// seq be made durable; it may return before the work is done. A batch
	// sent again with a seq the backend already took is skipped.
	Send(ctx context.Context, seq uint64, batch []*change.Change, flush bool) error
	// Wait blocks until the backend took every batch up to taken and made
	// every batch up to durable durable, or failed, and returns the seq up to
	// which batches are durable. After a failure, the next Send starts
	// afresh: batches must be sent again.
	Wait(ctx context.Context, taken, durable uint64) (uint64, error)
	Close(ctx context.Context) error
	// Lost reports whether the error means the backend's process is gone,
	// so that it must be started again; Exited, whether it is gone now.
	Lost(err error) bool
	Exited() bool
	Kill()
}

type pending struct {
	seq   uint64
	batch []*change.Change
}

// Sink is one configured sink. Its methods are called from one goroutine at
// a time (the pipeline's delivery loop for that sink), but the health check
// may run beside them, hence the mutex.
type Sink struct {
	name   string
	raw    json.RawMessage
	opts   Options
	start  func(ctx context.Context) (backend, error)
	mu     sync.Mutex
	b      backend
	desc   sdk.Description
	opened bool
	// launched says a backend was started before: starting another is a restart.
	launched bool
	seq      uint64    // last batch handed to the current backend
	unsafe   []pending // handed over, not yet durable: re-delivered after a failure
	// resend says the backend failed since it took the batches of unsafe:
	// they must reach it again before anything new.
	resend bool
	stop   context.CancelFunc
}

// inFlight is how many batches may be on their way to a sink before it took
// the first of them: the next batch crosses the process boundary while the
// sink writes one.
const inFlight = 2

// HealthInterval is how often the host checks that a sink's process is alive.
const HealthInterval = 500 * time.Millisecond

// Load starts the sink of one config entry and configures it.
func Load(ctx context.Context, spec config.Sink, opts Options) (*Sink, error) {
	raw, err := json.Marshal(spec.Config)
	if err != nil {
		return nil, fmt.Errorf("sink %q: encode config: %w", spec.Name, err)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	s := &Sink{name: spec.Name, raw: raw, opts: opts}
	mk, builtin := opts.Builtins[spec.Plugin]
	switch {
	case spec.InProcess && !builtin:
		return nil, fmt.Errorf("sink %q: in_process works only for built-in plugins %v, not %q", spec.Name, opts.Builtins.Names(), spec.Plugin)
	case spec.InProcess:
		s.start = func(context.Context) (backend, error) { return &inProcess{impl: mk()}, nil }
	default:
		c, err := commandFor(spec, opts)
		if err != nil {
			return nil, err
		}
		s.start = func(ctx context.Context) (backend, error) { return launch(ctx, c, opts.Log) }
	}
	if err := s.restart(ctx); err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.stop = stop
	go s.watch(wctx)
	return s, nil
}

// watch restarts the sink's process, with backoff, when it dies between
// calls, so that a crash is repaired (and reported) even while idle.
func (s *Sink) watch(ctx context.Context) {
	b := retry.Default()
	t := time.NewTicker(HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.b != nil && s.b.Exited() {
			err := errors.New("plugin process exited")
			s.opts.Log.Error("sink plugin process lost; restarting it", "sink", s.name, "err", err)
			s.b.Kill()
			s.b = nil
			s.health(err)
		}
		if s.b == nil && ctx.Err() == nil {
			if err := s.restart(ctx); err != nil {
				s.opts.Log.Error("sink plugin restart failed; retrying", "sink", s.name, "err", err)
				s.mu.Unlock()
				if b.Wait(ctx) != nil {
					return
				}
				continue
			}
			b.Reset()
			s.health(nil)
		}
		s.mu.Unlock()
	}
}

// commandFor says how to start the plugin process of a sink: a built-in
// served by this binary, or an external binary, checked before it runs.
func commandFor(spec config.Sink, opts Options) (command, error) {
	_, builtin := opts.Builtins[spec.Plugin]
	c := command{sink: spec.Name, path: spec.Plugin}
	switch {
	case builtin && spec.SHA256 != "":
		return c, fmt.Errorf("sink %q: sha256 is for plugin binaries given by path; %q is built into pgtrail: leave sha256 out", spec.Name, spec.Plugin)
	case builtin:
		c.argv = append(slices.Clone(opts.Self), spec.Plugin)
		c.env = pluginEnv(os.Environ(), append(slices.Clone(opts.BuiltinEnv[spec.Plugin]), spec.Env...))
		return c, nil
	case !strings.ContainsRune(spec.Plugin, '/'):
		return c, fmt.Errorf("sink %q: unknown plugin %q: built-in plugins are %v; give a plugin binary by its path (./%s)",
			spec.Name, spec.Plugin, opts.Builtins.Names(), spec.Plugin)
	}
	c.argv, c.env, c.external = []string{spec.Plugin}, pluginEnv(os.Environ(), spec.Env), true
	if spec.SHA256 != "" {
		sum, err := parseSHA256(spec.SHA256)
		if err != nil {
			return c, fmt.Errorf("sink %q: %w", spec.Name, err)
		}
		c.sha256 = sum
	}
	return c, nil
}

// Describe starts the plugin of spec only to ask for its description.
func Describe(ctx context.Context, spec config.Sink, opts Options) (sdk.Description, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c, err := commandFor(spec, opts)
	if err != nil {
		return sdk.Description{}, err
	}
	b, err := launch(ctx, c, opts.Log)
	if err != nil {
		return sdk.Description{}, err
	}
	defer b.Kill()
	return b.Describe(ctx)
}

// restart starts a backend, configures it, opens it if the sink was open, and
// re-delivers what the previous one had not made durable.
func (s *Sink) restart(ctx context.Context) error {
	if s.launched && s.opts.Restarted != nil {
		s.opts.Restarted(s.name)
	}
	s.launched = true
	if s.b != nil {
		s.b.Kill()
		s.b = nil
	}
	b, err := s.start(ctx)
	if err != nil {
		return err
	}
	fail := func(op string, err error) error {
		b.Kill()
		return s.wrap(op, err)
	}
	if err := b.Configure(ctx, s.raw); err != nil {
		return fail("configure", err)
	}
	// After Configure: the description may depend on the config (a sink's
	// flush interval).
	if s.desc, err = b.Describe(ctx); err != nil {
		return fail("describe", err)
	}
	if s.opened {
		if err := b.Open(ctx); err != nil {
			return fail("open", err)
		}
	}
	// A new process has taken nothing: number what it gets again from 1.
	s.b, s.seq = b, 0
	for i := range s.unsafe {
		s.seq++
		s.unsafe[i].seq = s.seq
	}
	s.resend = len(s.unsafe) > 0
	if err := s.redeliver(ctx); err != nil {
		if errors.As(err, new(*sdk.UnstorableBatch)) {
			// The sink is up and refuses a batch for its data: the next
			// call sends it again and gives it back to the pipeline.
			return nil
		}
		s.b.Kill()
		s.b = nil
		return s.wrap("re-deliver", err)
	}
	return nil
}

// redeliver sends again, after a failure, the batches not yet durable.
func (s *Sink) redeliver(ctx context.Context) error {
	if !s.resend {
		return nil
	}
	for _, p := range s.unsafe {
		if err := s.b.Send(ctx, p.seq, p.batch, false); err != nil {
			return err
		}
	}
	s.resend = false
	if len(s.unsafe) > 0 {
		s.opts.Log.Info("re-delivered batches not yet durable", "sink", s.name, "batches", len(s.unsafe))
	}
	return nil
}

// call runs op on the backend, first restarting it if its process was lost.
func (s *Sink) call(ctx context.Context, op string, f func(backend) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		if err := s.restart(ctx); err != nil {
			return err
		}
		s.health(nil)
	}
	err := s.redeliver(ctx)
	if err == nil {
		err = f(s.b)
	}
	err = s.giveBack(err)
	if err != nil && s.b.Lost(err) {
		s.opts.Log.Error("sink plugin process lost; it will be restarted", "sink", s.name, "err", err)
		s.b.Kill()
		s.b = nil
		s.health(err)
	}
	return s.wrap(op, err)
}

func (s *Sink) health(err error) {
	if s.opts.Health != nil {
		s.opts.Health("sink "+s.name+" plugin", err)
	}
}

func (s *Sink) wrap(op string, err error) error {
	if err != nil {
		return fmt.Errorf("sink %q: %s: %w", s.name, op, err)
	}
	return nil
}

// Name is the sink's name from the config.
func (s *Sink) Name() string { return s.name }

// Describe returns the plugin's own description.
func (s *Sink) Describe() sdk.Description {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.desc
}

// FlushInterval is how long a buffered batch may wait for Flush.
func (s *Sink) FlushInterval() time.Duration { return s.Describe().FlushInterval }

// Setup creates what the sink needs.
func (s *Sink) Setup(ctx context.Context) error {
	return s.call(ctx, "setup", func(b backend) error { return b.Setup(ctx) })
}

// Teardown removes it.
func (s *Sink) Teardown(ctx context.Context) error {
	return s.call(ctx, "teardown", func(b backend) error { return b.Teardown(ctx) })
}

// Open connects the sink; a restarted plugin is opened again.
func (s *Sink) Open(ctx context.Context) error {
	return s.call(ctx, "open", func(b backend) error {
		if err := b.Open(ctx); err != nil {
			return err
		}
		s.opened = true
		return nil
	})
}

// Check reports whether the sink can write.
func (s *Sink) Check(ctx context.Context) error {
	return s.call(ctx, "check", func(b backend) error { return b.Check(ctx) })
}

// Write hands over a batch and returns how many of the batches handed over
// are not yet durable. It returns while the sink still writes the batch (and
// the one before), so that the next one is on its way meanwhile. An error
// means the batch was not taken; earlier batches stay the host's to deliver.
func (s *Sink) Write(ctx context.Context, batch []*change.Change) (int, error) {
	var notDurable int
	err := s.call(ctx, "write", func(b backend) error {
		seq := s.seq + 1
		if err := b.Send(ctx, seq, batch, false); err != nil {
			s.resend = true
			return err
		}
		s.seq = seq
		s.unsafe = append(s.unsafe, pending{seq, batch})
		upTo, err := b.Wait(ctx, seq-min(seq, inFlight), 0)
		s.release(upTo)
		if n := len(s.unsafe); err != nil && n > 0 && s.unsafe[n-1].seq == seq {
			// The sink failed at this batch or before it, so it did not
			// take it: give it back. The pipeline hands it over again,
			// after a backoff, and the batches before it are sent again
			// first. (Under the same seq: a sink that did take it skips it.)
			s.unsafe, s.seq, s.resend = s.unsafe[:n-1], seq-1, true
			return err
		}
		notDurable = len(s.unsafe)
		return nil
	})
	return notDurable, err
}

// Flush makes every batch handed over durable.
func (s *Sink) Flush(ctx context.Context) error {
	return s.call(ctx, "flush", func(b backend) error {
		if len(s.unsafe) == 0 {
			return nil
		}
		err := b.Send(ctx, s.seq, nil, true)
		if err == nil {
			var upTo uint64
			upTo, err = b.Wait(ctx, s.seq, s.seq)
			s.release(upTo)
		}
		if err != nil {
			s.resend = true
		}
		return err
	})
}

// giveBack turns a sink's refusal of batch seq for its data into the
// pipeline's change.UnstorableError: that batch and those after it are not
// taken (the sink stops at the refused one), so they are given back, to be
// handed over again split, and the next batch gets the refused one's seq.
func (s *Sink) giveBack(err error) error {
	var ub *sdk.UnstorableBatch
	if !errors.As(err, &ub) {
		return err
	}
	i := 0
	for i < len(s.unsafe) && s.unsafe[i].seq < ub.Seq {
		i++
	}
	earlier := len(s.unsafe) - i
	s.unsafe = s.unsafe[:i]
	s.seq, s.resend = min(s.seq, ub.Seq-1), len(s.unsafe) > 0
	var u *change.UnstorableError
	if !errors.As(ub.Err, &u) {
		u = &change.UnstorableError{Err: ub.Err}
	}
	return &change.UnstorableError{Err: u.Err, Earlier: earlier}
}

// release forgets the batches the backend made durable.
func (s *Sink) release(upTo uint64) {
	n := 0
	for n < len(s.unsafe) && s.unsafe[n].seq <= upTo {
		n++
	}
	s.unsafe = s.unsafe[n:]
}

// Close disconnects the sink and stops its process.
func (s *Sink) Close(ctx context.Context) error {
	if s.stop != nil {
		s.stop()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil
	}
	err := s.b.Close(ctx)
	s.b.Kill()
	s.b = nil
	return s.wrap("close", err)
}

// inProcess calls a sink in this process: Send returns once it is written.
type inProcess struct {
	impl       sdk.Sink
	last, done uint64 // the last batch taken, and the last durable
}

func (p *inProcess) Describe(context.Context) (sdk.Description, error) { return p.impl.Describe(), nil }
func (p *inProcess) Configure(ctx context.Context, raw json.RawMessage) error {
	return p.impl.Configure(ctx, raw)
}
func (p *inProcess) Setup(ctx context.Context) error    { return p.impl.Setup(ctx) }
func (p *inProcess) Teardown(ctx context.Context) error { return p.impl.Teardown(ctx) }
func (p *inProcess) Open(ctx context.Context) error     { return p.impl.Open(ctx) }
func (p *inProcess) Check(ctx context.Context) error    { return p.impl.Check(ctx) }
func (p *inProcess) Close(ctx context.Context) error    { return p.impl.Close(ctx) }
func (p *inProcess) Lost(error) bool                    { return false }
func (p *inProcess) Exited() bool                       { return false }
func (p *inProcess) Kill()                              {}

func (p *inProcess) Send(ctx context.Context, seq uint64, batch []*change.Change, flush bool) error {
	switch {
	case flush:
		if err := p.impl.Flush(ctx); err != nil {
			return err
		}
		p.done = p.last
	case seq > p.last:
		durable, err := p.impl.Write(ctx, batch)
		if err != nil {
			var u *change.UnstorableError
			if errors.As(err, &u) {
				return &sdk.UnstorableBatch{Seq: seq, Err: err}
			}
			return err
		}
		p.last = seq
		if durable {
			p.done = seq
		}
	}
	return nil
}

func (p *inProcess) Wait(context.Context, uint64, uint64) (uint64, error) { return p.done, nil }
