package rules

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/pgtrail/pgtrail/core/change"
	"github.com/pgtrail/pgtrail/core/config"
)

func mustNew(t testing.TB, cfg config.Rules) *Set {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func update(schema, table, before, after string) *change.Change {
	return &change.Change{Schema: schema, Table: table, Operation: change.Update,
		Before: json.RawMessage(before), After: json.RawMessage(after), Context: change.Empty}
}

func TestAnUpdateOfIgnoredColumnsOnlyIsNotStored(t *testing.T) {
	r := mustNew(t, config.Rules{IgnoreColumns: []string{"public.*.updated_at", "*.*.cached_*"}})
	for _, c := range []struct {
		name string
		ch   *change.Change
		want bool
	}{
		{"only updated_at", update("public", "users", `{"id":1,"name":"a","updated_at":"t1"}`, `{"id":1,"name":"a","updated_at":"t2"}`), false},
		{"updated_at and a cached_ column", update("public", "users", `{"id":1,"cached_n":1,"updated_at":"t1"}`, `{"id":1,"cached_n":2,"updated_at":"t2"}`), false},
		{"a real change too", update("public", "users", `{"id":1,"name":"a","updated_at":"t1"}`, `{"id":1,"name":"b","updated_at":"t2"}`), true},
		{"other schema: updated_at not ignored", update("audit", "users", `{"id":1,"updated_at":"t1"}`, `{"id":1,"updated_at":"t2"}`), true},
		{"no before image", update("public", "users", `{}`, `{"id":1,"updated_at":"t2"}`), true},
		{"key-only before image", update("public", "users", `{"id":1}`, `{"id":1,"updated_at":"t2"}`), true},
		{"nothing changed", update("public", "users", `{"id":1,"updated_at":"t1"}`, `{"id":1,"updated_at":"t1"}`), true},
		{"an insert", &change.Change{Schema: "public", Table: "users", Operation: change.Create, Before: change.Empty, After: json.RawMessage(`{"updated_at":"t"}`)}, true},
	} {
		after := string(c.ch.After)
		if got := r.Apply(c.ch); got != c.want {
			t.Errorf("%s: stored %v, want %v", c.name, got, c.want)
		}
		if string(c.ch.After) != after {
			t.Errorf("%s: after changed to %s: a stored change is stored whole", c.name, c.ch.After)
		}
	}
}

func TestRedactionReplacesColumnsInBothImagesTheKeyAndToastNames(t *testing.T) {
	r := mustNew(t, config.Rules{HMACKey: "k", Redact: []config.Redaction{
		{Columns: []string{"public.users.ssn", "public.users.id"}, With: "hmac"},
		{Columns: []string{"*.*.password*"}, With: "drop"},
		{Columns: []string{"public.users.phone"}, With: "mask"},
		{Columns: []string{"public.users.note"}, With: "null"},
	}})
	c := update("public", "users",
		`{"id":42,"ssn":"123-45-6789","password_hash":"s3cret","phone":"+33 6 12 34 56 78","note":"x","name":"Ann"}`,
		`{"id":42,"ssn":"123-45-6789","phone":"+33 6 12 34 56 79","note":"y","name":"Ann"}`)
	c.PrimaryKey, c.UnchangedToast = "42", []string{"password_hash"}
	if !r.Apply(c) {
		t.Fatal("not stored")
	}
	id, ssn := pseudo("k", `42`), pseudo("k", `"123-45-6789"`)
	wantBefore := `{"id":"` + id + `","ssn":"` + ssn + `","phone":"*************6 78","note":null,"name":"Ann"}`
	wantAfter := `{"id":"` + id + `","ssn":"` + ssn + `","phone":"*************6 79","note":null,"name":"Ann"}`
	if string(c.Before) != wantBefore || string(c.After) != wantAfter {
		t.Fatalf("before %s\n want %s\nafter %s\n want %s", c.Before, wantBefore, c.After, wantAfter)
	}
	if c.PrimaryKey != id || len(c.UnchangedToast) != 0 {
		t.Fatalf("primary key %q (want %q), unchanged_toast %v (want none)", c.PrimaryKey, id, c.UnchangedToast)
	}
	// Other tables are untouched.
	o := update("public", "orders", `{"ssn":"1"}`, `{"ssn":"2"}`)
	r.Apply(o)
	if string(o.Before) != `{"ssn":"1"}` || string(o.After) != `{"ssn":"2"}` {
		t.Fatalf("orders redacted: %s %s", o.Before, o.After)
	}
}

func TestACompositeKeyHidesItsRedactedPart(t *testing.T) {
	r := mustNew(t, config.Rules{Redact: []config.Redaction{{Columns: []string{"public.t.email"}, With: "mask"}}})
	c := &change.Change{Schema: "public", Table: "t", Operation: change.Create, Before: change.Empty,
		After: json.RawMessage(`{"tenant":7,"email":"ann@example.com"}`), PrimaryKey: `[7,"ann@example.com"]`, Context: change.Empty}
	r.Apply(c)
	if want := `[7,"***********.com"]`; c.PrimaryKey != want {
		t.Fatalf("primary key %s, want %s", c.PrimaryKey, want)
	}
}

func TestContextKeysAreRedactedByDottedPath(t *testing.T) {
	r := mustNew(t, config.Rules{HMACKey: "k", Redact: []config.Redaction{
		{Context: []string{"ip", "headers.authorization"}, With: "mask"},
		{Context: []string{"user_email"}, With: "hmac"},
		{Context: []string{"secret*"}, With: "drop"},
	}})
	c := &change.Change{Schema: "s", Table: "t", Operation: change.Create, Before: change.Empty, After: change.Empty,
		Context: json.RawMessage(`{"ip":"10.0.0.1","headers":{"authorization":"Bearer abcdefgh","accept":"*/*"},"user_email":"a@b.c","secret_token":"x","endpoint":"/u","authorization":"kept"}`)}
	r.Apply(c)
	want := `{"ip":"****.0.1","headers":{"authorization":"***********efgh","accept":"*/*"},"user_email":"` + pseudo("k", `"a@b.c"`) + `","endpoint":"/u","authorization":"kept"}`
	if string(c.Context) != want {
		t.Fatalf("context %s\nwant    %s", c.Context, want)
	}
	msg := r.Message("pgtrail", []byte(`{"ip":"1.2.3.4"}`))
	if string(msg) != `{"ip":"*******"}` {
		t.Fatalf("message content %s", msg)
	}
	if got := r.Message("other", []byte(`{"ip":"1.2.3.4"}`)); string(got) != `{"ip":"1.2.3.4"}` {
		t.Fatalf("unknown prefix redacted: %s", got)
	}
}

func TestMaskAndPseudonymFormats(t *testing.T) {
	for in, want := range map[string]string{
		`"abc"`: `"***"`, `"abcdefgh"`: `"****efgh"`, `12345`: `"*****"`, `true`: `"****"`,
		`{"a":1}`: `"****"`, `[1,2]`: `"****"`, `null`: `null`, `"été-1234"`: `"****1234"`,
	} {
		if got := string(Mask([]byte(in))); got != want {
			t.Errorf("Mask(%s) = %s, want %s", in, got, want)
		}
	}
	// Canonical text: the same value written two ways has one pseudonym.
	a, b := Pseudonym([]byte("k"), []byte(`{"b":1, "a":"<x>"}`)), Pseudonym([]byte("k"), []byte(`{"a":"\u003cx>","b":1}`))
	if a != b || a != pseudo("k", `{"a":"<x>","b":1}`) || !strings.HasPrefix(a, "hmac:") || len(a) != 5+64 {
		t.Fatalf("pseudonyms %s and %s", a, b)
	}
	if Pseudonym([]byte("other"), []byte(`1`)) == Pseudonym([]byte("k"), []byte(`1`)) {
		t.Fatal("the pseudonym does not depend on the key")
	}
}

func TestNoRulesIsNilAndKeepsEverything(t *testing.T) {
	r := mustNew(t, config.Rules{})
	if r != nil {
		t.Fatal("empty rules compiled to a non-nil value")
	}
	c := update("public", "users", `{"a":1}`, `{"a":2}`)
	if !r.Apply(c) || string(c.After) != `{"a":2}` {
		t.Fatal("nil rules changed a change")
	}
}

func TestUnmatchedPatternsAreReported(t *testing.T) {
	r := mustNew(t, config.Rules{IgnoreColumns: []string{"public.*.updated_at"},
		Redact: []config.Redaction{{Columns: []string{"public.users.sn", "*.*.pass*"}, With: "null"}}})
	got := r.Unmatched([][3]string{{"public", "users", "ssn"}, {"public", "users", "updated_at"}, {"app", "x", "password"}})
	if !slices.Equal(got, []string{"public.users.sn"}) {
		t.Fatalf("unmatched %v", got)
	}
}

func pseudo(key, canonical string) string {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(canonical))
	return "hmac:" + hex.EncodeToString(m.Sum(nil))
}

// BenchmarkApply is the cost of rules on one change of a table they touch
// (an ignore pattern, hmac of one column, drop of another, a masked
// context key) and on one of a table they do not.
func BenchmarkApply(b *testing.B) {
	r := mustNew(b, config.Rules{IgnoreColumns: []string{"public.*.updated_at"}, HMACKey: "k", Redact: []config.Redaction{
		{Columns: []string{"public.users.ssn"}, With: "hmac"}, {Columns: []string{"*.*.password*"}, With: "drop"},
		{Context: []string{"ip"}, With: "mask"}}})
	before := json.RawMessage(`{"id":1,"name":"Ann","email":"ann@example.com","ssn":"123-45-6789","password_hash":"x","balance":10,"updated_at":"2026-01-01T00:00:00Z"}`)
	after := json.RawMessage(`{"id":1,"name":"Ann","email":"ann@example.com","ssn":"123-45-6789","password_hash":"x","balance":11,"updated_at":"2026-01-01T00:00:01Z"}`)
	ctx := json.RawMessage(`{"user_id":42,"ip":"203.0.113.9","endpoint":"/users"}`)
	for _, table := range []string{"users", "other"} {
		b.Run(table, func(b *testing.B) {
			schema := "public"
			if table == "other" {
				schema = "app"
			}
			b.ReportAllocs()
			for range b.N {
				c := &change.Change{Schema: schema, Table: table, Operation: change.Update, PrimaryKey: "1", Before: before, After: after, Context: ctx}
				r.Apply(c)
			}
		})
	}
}
