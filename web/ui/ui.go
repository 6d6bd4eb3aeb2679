// Package ui is the activity log's web UI: hand-written HTML, CSS and
// JavaScript embedded in the binary (no build step, nothing fetched at run
// time), a single page that reads the JSON API (web/api).
package ui

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Handler serves the UI: its files under /assets/, and the page itself for
// every other path, where the page routes (/changes/ID, /history/..., ...)
// so that each view has a permalink.
func Handler() http.Handler {
	files, _ := fs.Sub(static, "static")
	assets := http.StripPrefix("/assets/", http.FileServerFS(files))
	index, _ := fs.ReadFile(files, "index.html")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Only this server's own files: no inline script, no other origin.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/assets/") {
			h.Set("Cache-Control", "no-cache")
			assets.ServeHTTP(w, r)
			return
		}
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		_, _ = w.Write(index)
	})
}
