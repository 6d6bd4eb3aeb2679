package api

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func request(t *testing.T, a *API, host, auth string) (int, string) {
	t.Helper()
	r := httptest.NewRequest("GET", "http://"+host+"/api/v1/info", nil)
	r.RemoteAddr = "192.0.2.7:5555"
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	var body struct {
		Error    string
		Identity string
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("answer is not JSON: %q", w.Body.String())
	}
	return w.Code, body.Error + body.Identity
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestANonLoopbackListenerWithoutTokensRefusesEveryRequest(t *testing.T) {
	a := New(Options{Loopback: false, Log: quiet()})
	code, msg := request(t, a, "203.0.113.5:9187", "")
	if code != http.StatusUnauthorized || !strings.Contains(msg, "no ui.tokens are set") {
		t.Errorf("got %d %q, want 401", code, msg)
	}
}

func TestTokensAreRequiredAndIdentifyTheCallerByFingerprint(t *testing.T) {
	const token = "0123456789abcdef0123"
	a := New(Options{Loopback: false, Tokens: []string{token}, Log: quiet()})
	for _, auth := range []string{"", "Bearer", "Bearer wrong-token-0123456789", "Basic " + token, token} {
		if code, msg := request(t, a, "203.0.113.5:9187", auth); code != http.StatusUnauthorized || strings.Contains(msg, token) {
			t.Errorf("Authorization %q: %d %q, want 401 without the token", auth, code, msg)
		}
	}
	code, who := request(t, a, "203.0.113.5:9187", "Bearer "+token)
	if code != http.StatusOK || !strings.HasPrefix(who, "token:") || strings.Contains(who, token) || len(who) != len("token:")+8 {
		t.Errorf("right token: %d identity %q, want 200 and token:<8 hex>", code, who)
	}
}

func TestALoopbackListenerWithoutTokensAnswersLoopbackHostNamesOnly(t *testing.T) {
	a := New(Options{Loopback: true, Log: quiet()})
	for _, host := range []string{"127.0.0.1:9187", "localhost:9187", "[::1]:9187"} {
		if code, _ := request(t, a, host, ""); code != http.StatusOK {
			t.Errorf("Host %s: %d, want 200", host, code)
		}
	}
	// A page elsewhere whose name was rebound to 127.0.0.1 reaches the
	// server with its own name.
	if code, msg := request(t, a, "evil.example:9187", ""); code != http.StatusUnauthorized || !strings.Contains(msg, "not a loopback name") {
		t.Errorf("Host evil.example: %d %q, want 401", code, msg)
	}
}
