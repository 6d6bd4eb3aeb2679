package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// The web UI in a real headless browser: Debian's chromium, driven by
// chromedp. Screenshots go to $PGTRAIL_ARTIFACTS (default
// test/e2e/artifacts, ignored by git).

func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PGTRAIL_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts headless chromium for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run `make deps` (Debian package chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1280, 900), chromedp.Flag("lang", "en-US"))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil { // starts the browser, for the context's life
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// into runs a and stores its value in dst.
func into[T any](dst *T, a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		v, err := a(ctx, t)
		*dst = v
		return err
	})
}

// shot saves a full-page screenshot as name.png in dir.
func shot(dir, name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, t)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	})
}

// darkPhone emulates a phone that prefers dark mode.
func darkPhone() chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		if _, err := chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)(ctx, t); err != nil {
			return err
		}
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	})
}

func TestWebUIShowsTheFeedFiltersDiffsTimelinesAndRevertPreviews(t *testing.T) {
	dbURL := cluster.NewDatabase(t)
	c := connect(t, dbURL)
	exec1(t, c, `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric(10,2), meta jsonb, note text);
		ALTER TABLE orders REPLICA IDENTITY FULL;
		CREATE TABLE order_lines (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line));
		ALTER TABLE order_lines REPLICA IDENTITY FULL`)
	conn, a := startActivityLog(t, dbURL, "  revert:\n    apply: true\n")
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":42,"endpoint":"POST /orders"}')`,
		`INSERT INTO orders VALUES (1, 'new', 99.90, '{"shipping":{"method":"post","days":3},"gift":false}', 'leave at the door'),
			(2, 'new', 12.50, '{}', NULL)`,
		`INSERT INTO order_lines VALUES (1, 1, 'tea', 2), (1, 2, 'cups', 4)`)
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":7,"endpoint":"PATCH /orders/1"}')`,
		`UPDATE orders SET status = 'paid', meta = jsonb_set(meta, '{shipping,days}', '1') WHERE id = 1`,
		`UPDATE order_lines SET qty = 3 WHERE order_id = 1 AND line = 2`)
	txn(t, conn, `SELECT pgtrail.set_context('{"user_id":7,"job":"cleanup"}')`, `DELETE FROM orders WHERE id = 2`)
	waitForChanges(t, conn, 7, 30*time.Second)
	update := a.list("table=orders&operation=UPDATE").Changes[0]

	dir := artifacts(t)
	ctx, cancel := context.WithTimeout(browser(t), 90*time.Second)
	defer cancel()
	var rows, filtered int
	var search, diff, unchanged, timeline, sql, asOfRow string
	err := chromedp.Do(ctx,
		chromedp.Navigate(a.base+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr.change`)),
		into(&rows, chromedp.Evaluate[int](`document.querySelectorAll("tr.change").length`)),
		shot(dir, "ui-feed"),

		// Filter: table and operation, then the state is in the URL.
		chromedp.SendKeys(chromedp.CSS(`input[name=table]`), "orders"),
		chromedp.SetValue(chromedp.CSS(`select[name=operation]`), "UPDATE"),
		chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr.change[data-id="`+update.ID+`"]`)),
		into(&filtered, chromedp.Evaluate[int](`document.querySelectorAll("tr.change").length`)),
		into(&search, chromedp.Evaluate[string](`location.search`)),
		shot(dir, "ui-feed-filtered"),

		// The change's diff: changed columns, nested jsonb by path, the rest collapsed.
		chromedp.Click(chromedp.CSS(`tr.change[data-id="`+update.ID+`"] td.when`)),
		chromedp.WaitVisible(chromedp.CSS(`#diff`)),
		into(&diff, chromedp.Text(chromedp.CSS(`#diff`))),
		chromedp.Click(chromedp.CSS(`#unchanged summary`)),
		into(&unchanged, chromedp.Text(chromedp.CSS(`#unchanged`))),
		shot(dir, "ui-change-diff"),

		// The record's timeline.
		chromedp.Click(chromedp.Search(`//a[text()="Record timeline"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.timeline li + li`)),
		into(&timeline, chromedp.Text(chromedp.CSS(`.timeline`))),
		shot(dir, "ui-timeline"),

		// As of just before the update.
		chromedp.Navigate(a.base+"/as-of/public.orders/1?at="+update.CommittedAt.Add(-time.Microsecond).Format(time.RFC3339Nano)),
		chromedp.WaitVisible(chromedp.CSS(`#row`)),
		into(&asOfRow, chromedp.Text(chromedp.CSS(`#row`))),
		shot(dir, "ui-as-of"),

		// The revert preview of the update.
		chromedp.Navigate(a.base+"/changes/"+update.ID),
		chromedp.WaitVisible(chromedp.CSS(`#diff`)),
		chromedp.Click(chromedp.Search(`//a[text()="Revert…"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#sql`)),
		into(&sql, chromedp.Text(chromedp.CSS(`#sql`))),
		chromedp.WaitVisible(chromedp.CSS(`#apply`)),
		shot(dir, "ui-revert"),
	)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	if rows != 7 || filtered != 1 {
		t.Errorf("feed rows %d, filtered %d; want 7, 1", rows, filtered)
	}
	if !strings.Contains(search, "table=orders") || !strings.Contains(search, "operation=UPDATE") {
		t.Errorf("filter state not in the URL: %q", search)
	}
	for _, want := range []string{"status", `"new"`, `"paid"`, "meta.shipping.days", "3", "1"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
	if strings.Contains(diff, "leave at the door") || !strings.Contains(unchanged, "3 unchanged columns") || !strings.Contains(unchanged, "leave at the door") {
		t.Errorf("unchanged columns not collapsed: diff %q, unchanged %q", diff, unchanged)
	}
	if strings.Count(timeline, "CREATE") != 1 || strings.Count(timeline, "UPDATE") != 1 || !strings.Contains(timeline, "user_id=7") {
		t.Errorf("timeline:\n%s", timeline)
	}
	if !strings.Contains(asOfRow, `"new"`) || strings.Contains(asOfRow, `"paid"`) {
		t.Errorf("as-of just before the update:\n%s", asOfRow)
	}
	if !strings.Contains(sql, `UPDATE "public"."orders" SET`) || !strings.Contains(sql, `"status" = 'new'::text`) {
		t.Errorf("revert SQL:\n%s", sql)
	}

	// On a phone, in dark mode.
	var bg string
	err = chromedp.Do(ctx,
		darkPhone(),
		chromedp.Navigate(a.base+"/?user=7"),
		chromedp.WaitVisible(chromedp.CSS(`tr.change`)),
		into(&bg, chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`)),
		shot(dir, "ui-feed-phone-dark"),
		chromedp.Navigate(a.base+"/changes/"+update.ID),
		chromedp.WaitVisible(chromedp.CSS(`#diff`)),
		shot(dir, "ui-change-phone-dark"),
	)
	if err != nil {
		t.Fatalf("browser on a phone: %v", err)
	}
	if bg != "rgb(21, 23, 26)" {
		t.Errorf("dark mode background %q", bg)
	}
}
