package discard

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgtrail/pgtrail/plugins/sdk"
	"github.com/pgtrail/pgtrail/plugins/sdk/sdktest"
)

var _ sdk.Sink = (*Sink)(nil)

func TestEveryBatchIsDurableAtOnce(t *testing.T) {
	ctx := context.Background()
	s := New()
	if err := s.Configure(ctx, nil); err != nil {
		t.Fatalf("Configure(nil): %v", err)
	}
	if err := s.Configure(ctx, json.RawMessage(`{}`)); err != nil {
		t.Fatalf("Configure({}): %v", err)
	}
	for _, batch := range [][]*sdk.Change{nil, sdktest.Changes(1000, time.Now())} {
		durable, err := s.Write(ctx, batch)
		if err != nil || !durable {
			t.Fatalf("Write of %d changes = %v, %v; want durable, no error", len(batch), durable, err)
		}
	}
	if d := s.Describe(); d.Name != "null" || d.FlushInterval != 0 {
		t.Fatalf("Describe = %+v, want name null and no flush interval", d)
	}
}

func TestConfigWithAKeyIsAnError(t *testing.T) {
	err := New().Configure(context.Background(), json.RawMessage(`{"url":"x"}`))
	if err == nil || !strings.Contains(err.Error(), "config.url") {
		t.Fatalf("Configure with a key = %v, want an error naming config.url", err)
	}
}
