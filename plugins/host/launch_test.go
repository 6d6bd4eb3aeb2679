package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/plugins/sdk"
)

// TestMain makes this test binary a sink plugin when the host starts it as
// one (go-plugin's cookie is in its environment): the sink reports its
// process's environment.
func TestMain(m *testing.M) {
	if os.Getenv(sdk.Handshake.MagicCookieKey) == sdk.Handshake.MagicCookieValue {
		sdk.Serve(envReporter{})
		return
	}
	os.Exit(m.Run())
}

// envReporter writes its process's environment, one variable a line, to
// the file named by config.env_file when configured, and stores nothing.
type envReporter struct{}

func (envReporter) Describe() sdk.Description { return sdk.Description{Name: "env-reporter"} }
func (envReporter) Configure(_ context.Context, raw json.RawMessage) error {
	var cfg struct {
		EnvFile string `json:"env_file"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.EnvFile == "" {
		return err
	}
	return os.WriteFile(cfg.EnvFile, []byte(strings.Join(os.Environ(), "\n")), 0o600)
}
func (envReporter) Setup(context.Context) error    { return nil }
func (envReporter) Teardown(context.Context) error { return nil }
func (envReporter) Open(context.Context) error     { return nil }
func (envReporter) Check(context.Context) error    { return nil }
func (envReporter) Close(context.Context) error    { return nil }
func (envReporter) Flush(context.Context) error    { return nil }
func (envReporter) Write(context.Context, []*sdk.Change) (bool, error) {
	return true, nil
}

var quiet = Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

// pluginCopy copies this test binary, the plugin, into a fresh directory
// with the given modes, and returns its path and sha256.
func pluginCopy(t *testing.T, fileMode, dirMode os.FileMode) (string, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "env-reporter")
	if err := os.WriteFile(path, body, 0o700); err != nil {
		t.Fatal(err)
	}
	// Chmod, not the modes above: those pass through the umask.
	if err := os.Chmod(path, fileMode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	return path, hex.EncodeToString(sum[:])
}

func loadErr(t *testing.T, spec config.Sink) error {
	t.Helper()
	s, err := Load(context.Background(), spec, quiet)
	if err == nil {
		s.Close(context.Background())
	}
	return err
}

func TestPluginWithTheConfiguredSHA256RunsAndAnyOtherIsRefused(t *testing.T) {
	path, sum := pluginCopy(t, 0o755, 0o755)
	if err := loadErr(t, config.Sink{Name: "p", Plugin: path, SHA256: sum}); err != nil {
		t.Fatalf("the right sha256: %v", err)
	}
	wrong := strings.Repeat("0", 64)
	err := loadErr(t, config.Sink{Name: "p", Plugin: path, SHA256: wrong})
	want := `sink "p": refusing to run plugin ` + path + ": its sha256 is " + sum + ", not the " + wrong + " that sinks[].sha256 gives: if the plugin was updated on purpose, set sha256 to its new sum"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("a wrong sha256: %v; want %q", err, want)
	}
}

func TestPluginThatOthersCouldReplaceIsRefused(t *testing.T) {
	for _, c := range []struct {
		name      string
		file, dir os.FileMode
		chown     bool // the binary belongs to another user
		want      string
	}{
		{"group-writable binary", 0o775, 0o755, false, "is writable by its group or others (mode 0775), so they could replace the plugin: chmod go-w "},
		{"world-writable binary", 0o757, 0o755, false, "(mode 0757)"},
		{"group-writable directory", 0o755, 0o775, false, "directory "},
		{"binary of another user", 0o755, 0o755, true, "is owned by uid 65534, not by pgtrail's user"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, _ := pluginCopy(t, c.file, c.dir)
			if c.chown {
				if os.Geteuid() != 0 {
					t.Skip("giving a file to another user needs root")
				}
				if err := os.Chown(path, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			err := loadErr(t, config.Sink{Name: "p", Plugin: path})
			if err == nil || !strings.Contains(err.Error(), `sink "p": refusing to run plugin `+path+": ") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load = %v; want it refused, saying %q", err, c.want)
			}
		})
	}
	// A sticky directory such as /tmp is fine: only a file's owner may replace it there.
	path, _ := pluginCopy(t, 0o755, 0o777|os.ModeSticky)
	if err := loadErr(t, config.Sink{Name: "p", Plugin: path}); err != nil {
		t.Fatalf("in a sticky directory: %v", err)
	}
}

// pluginEnvOf runs spec's plugin, which reports its environment, and
// returns it.
func pluginEnvOf(t *testing.T, spec config.Sink, opts Options) map[string]string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "env")
	spec.Config = map[string]any{"env_file": file}
	s, err := Load(context.Background(), spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	body, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for line := range strings.SplitSeq(string(body), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	return env
}

func TestPluginsSeeOnlyTheEnvironmentTheyAreGiven(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://app:secret@db/app")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
	t.Setenv("AWS_PROFILE", "audit")
	t.Setenv("PGTRAIL_TEST_ONE", "1")
	t.Setenv("PGTRAIL_TEST_TWO", "2")
	t.Setenv("TZ", "Europe/Paris")
	path, _ := pluginCopy(t, 0o755, 0o755)
	self, _ := os.Executable()
	builtin := quiet
	builtin.Builtins = Builtins{"reporter": nil}
	builtin.BuiltinEnv = map[string][]string{"reporter": {"AWS_*"}}
	builtin.Self = []string{self}
	for _, c := range []struct {
		name       string
		spec       config.Sink
		opts       Options
		has, lacks []string
	}{
		{"external, nothing allowed", config.Sink{Name: "p", Plugin: path}, quiet,
			[]string{"TZ", "PATH"}, []string{"DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "PGTRAIL_TEST_ONE"}},
		{"external, an allow-list", config.Sink{Name: "p", Plugin: path, Env: []string{"AWS_PROFILE", "PGTRAIL_TEST_*"}}, quiet,
			[]string{"AWS_PROFILE", "PGTRAIL_TEST_ONE", "PGTRAIL_TEST_TWO", "TZ"}, []string{"DATABASE_URL", "AWS_SECRET_ACCESS_KEY"}},
		{"built-in, what it reads", config.Sink{Name: "p", Plugin: "reporter"}, builtin,
			[]string{"AWS_PROFILE", "AWS_SECRET_ACCESS_KEY", "TZ"}, []string{"DATABASE_URL", "PGTRAIL_TEST_ONE"}},
		{"built-in, and an allow-list", config.Sink{Name: "p", Plugin: "reporter", Env: []string{"PGTRAIL_TEST_TWO"}}, builtin,
			[]string{"AWS_SECRET_ACCESS_KEY", "PGTRAIL_TEST_TWO"}, []string{"DATABASE_URL", "PGTRAIL_TEST_ONE"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			env := pluginEnvOf(t, c.spec, c.opts)
			for _, k := range c.has {
				if env[k] != os.Getenv(k) {
					t.Errorf("the plugin's %s is %q, want %q", k, env[k], os.Getenv(k))
				}
			}
			for _, k := range c.lacks {
				if v, ok := env[k]; ok {
					t.Errorf("the plugin sees %s=%s", k, v)
				}
			}
		})
	}
}

// TestRestartsLeaveNoGoroutineBehind restarts a plugin process again and
// again: each one's log pipe and its reader must end with it.
func TestRestartsLeaveNoGoroutineBehind(t *testing.T) {
	path, _ := pluginCopy(t, 0o755, 0o755)
	ctx := context.Background()
	before := runtime.NumGoroutine()
	s, err := Load(ctx, config.Sink{Name: "p", Plugin: path}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	const restarts = 20
	for range restarts {
		s.mu.Lock()
		err := s.restart(ctx)
		s.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Goroutines end a moment after what they served; a leak stays.
	var now int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= before+2 {
			break
		}
	}
	if now > before+2 {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		t.Fatalf("%d goroutines before %d restarts, %d after:\n%s", before, restarts, now, firstStacks(stacks, 5))
	}
}

func firstStacks(all string, n int) string {
	stacks := strings.Split(all, "\n\n")
	return strings.Join(stacks[:min(n, len(stacks))], "\n\n")
}

// TestAPluginProcessThatDiesIsRestartedAndCounted: the first start is no
// restart; a process that dies is started again and reported once.
func TestAPluginProcessThatDiesIsRestartedAndCounted(t *testing.T) {
	path, _ := pluginCopy(t, 0o755, 0o755)
	ctx := context.Background()
	var mu sync.Mutex
	var restarted []string
	opts := quiet
	opts.Restarted = func(sink string) {
		mu.Lock()
		defer mu.Unlock()
		restarted = append(restarted, sink)
	}
	s, err := Load(ctx, config.Sink{Name: "p", Plugin: path}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	mu.Lock()
	if len(restarted) != 0 {
		t.Fatalf("restarts counted at the first start: %q", restarted)
	}
	mu.Unlock()
	s.mu.Lock()
	s.b.Kill()
	s.mu.Unlock()
	for deadline := time.Now().Add(5 * HealthInterval); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := slices.Clone(restarted)
		mu.Unlock()
		if len(n) == 1 && n[0] == "p" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarts reported after the process died: got %q, want [p]", n)
		}
	}
}
