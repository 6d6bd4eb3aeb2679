package kafka

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pgtrail/pgtrail/core/config"
	"github.com/pgtrail/pgtrail/core/metrics"
	"github.com/pgtrail/pgtrail/core/pipeline"
	"github.com/pgtrail/pgtrail/test/pgtest"
	"github.com/pgtrail/pgtrail/test/testbed"
)

// member speaks the classic group protocol over its own connection, so that
// a test can end it between any two requests, as kill -9 does.
type member struct {
	t    *testing.T
	conn net.Conn
	corr int32
	id   string
}

func dialMember(t *testing.T, addr string) *member {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &member{t: t, conn: conn}
}

// call sends req and reads its response (request header v1, response header v0:
// the versions used here are not flexible).
func (m *member) call(req kmsg.Request) kmsg.Response {
	m.t.Helper()
	m.corr++
	b := binary.BigEndian.AppendUint32(nil, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(req.Key()))
	b = binary.BigEndian.AppendUint16(b, uint16(req.GetVersion()))
	b = binary.BigEndian.AppendUint32(b, uint32(m.corr))
	b = binary.BigEndian.AppendUint16(b, uint16(len("member")))
	b = append(b, "member"...)
	b = req.AppendTo(b)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	if _, err := m.conn.Write(b); err != nil {
		m.t.Fatal(err)
	}
	size := make([]byte, 4)
	if _, err := io.ReadFull(m.conn, size); err != nil {
		m.t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint32(size))
	if _, err := io.ReadFull(m.conn, body); err != nil {
		m.t.Fatal(err)
	}
	resp := req.ResponseKind()
	if err := resp.ReadFrom(body[4:]); err != nil {
		m.t.Fatal(err)
	}
	return resp
}

func (m *member) join(group, topic string, session time.Duration) *kmsg.JoinGroupResponse {
	m.t.Helper()
	req := kmsg.NewPtrJoinGroupRequest()
	req.Version = 1
	req.Group, req.MemberID, req.ProtocolType = group, m.id, "consumer"
	req.SessionTimeoutMillis, req.RebalanceTimeoutMillis = int32(session/time.Millisecond), 10000
	meta := kmsg.NewConsumerMemberMetadata()
	meta.Topics = []string{topic}
	p := kmsg.NewJoinGroupRequestProtocol()
	p.Name, p.Metadata = "range", meta.AppendTo(nil)
	req.Protocols = append(req.Protocols, p)
	resp := m.call(req).(*kmsg.JoinGroupResponse)
	if resp.ErrorCode != 0 {
		m.t.Fatalf("join group: error %d", resp.ErrorCode)
	}
	m.id = resp.MemberID
	return resp
}

// lead syncs generation gen as its leader, taking every partition listed.
func (m *member) lead(group string, gen int32, topic string, partitions ...int32) {
	m.t.Helper()
	a := kmsg.NewConsumerMemberAssignment()
	at := kmsg.NewConsumerMemberAssignmentTopic()
	at.Topic, at.Partitions = topic, partitions
	a.Topics = append(a.Topics, at)
	ga := kmsg.NewSyncGroupRequestGroupAssignment()
	ga.MemberID, ga.MemberAssignment = m.id, a.AppendTo(nil)
	req := kmsg.NewPtrSyncGroupRequest()
	req.Group, req.Generation, req.MemberID = group, gen, m.id
	req.GroupAssignment = append(req.GroupAssignment, ga)
	if resp := m.call(req).(*kmsg.SyncGroupResponse); resp.ErrorCode != 0 {
		m.t.Fatalf("sync group: error %d", resp.ErrorCode)
	}
}

// seeded starts a kfake cluster whose topic bemi holds one message, value.
func seeded(t *testing.T, ctx context.Context, value string, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(1, "bemi", "bemi.dlq")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := c.ListenAddrs()[0]
	w := &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "bemi", RequiredAcks: kafkago.RequireAll}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte(value)}); err != nil {
		t.Fatal(err)
	}
	return c, addr
}

// A member elected leader that dies before its SyncGroup makes the
// coordinator fail the others' SyncGroup with RebalanceInProgress once its
// session expires (Kafka and kfake alike): the source joins again, gets the
// partition and reads it, rather than giving up.
func TestLeaderDyingBetweenJoinAndSyncHandsThePartitionToTheSurvivor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, addr := seeded(t, ctx, `{"op": "c", "ts_ms": 1, "before": null, "after": {"id": 1},
		"source": {"connector": "postgresql", "db": "app", "schema": "public", "table": "accounts", "txId": 7, "lsn": 100, "ts_ms": 1}}`,
		kfake.GroupMinSessionTimeout(time.Second))

	// Another member leads the group and owns the partition.
	x := dialMember(t, addr)
	x.lead("pgtrail", x.join("pgtrail", "bemi", 30*time.Second).Generation, "bemi", 0)

	s, err := Open(ctx, config.Kafka{Brokers: []string{addr}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq", FetchMaxBytes: 8 << 20},
		config.Debezium{KeyColumns: []string{"id"}}, slog.New(slog.DiscardHandler), metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []pipeline.Event, 16)
	var runErr error
	done := make(chan struct{})
	rctx, stop := context.WithCancel(ctx)
	go func() {
		runErr = s.Run(rctx, out)
		close(done)
	}()
	defer func() {
		stop()
		<-done
		s.Close(context.Background())
	}()
	if _, err := c.WaitGroupInfo(ctx, "pgtrail", func(g *kfake.GroupInfo) bool {
		return g != nil && g.State == "PreparingRebalance" && len(g.Members) == 2
	}); err != nil {
		t.Fatalf("the source did not join: %v", err)
	}

	// The member joins the new generation as its leader and dies.
	if j := x.join("pgtrail", "bemi", time.Second); j.LeaderID != x.id {
		t.Fatalf("leader of generation %d is %s, want the member that led before", j.Generation, j.LeaderID)
	}
	x.conn.Close()

	for {
		select {
		case evs := <-out:
			for _, ev := range evs {
				if ev.Kind == pipeline.Row {
					if ev.XID != 7 || ev.Change.Table != "accounts" {
						t.Fatalf("read %+v", ev.Change)
					}
					return
				}
			}
		case <-done:
			t.Fatalf("Run ended: %v", runErr)
		case <-ctx.Done():
			t.Fatalf("the source never read the partition: %v", c.GroupInfo("pgtrail"))
		}
	}
}

// A catalog that cannot answer (here: its database does not exist yet) is
// not the message's fault: the partition retries the message until the
// catalog answers, and then delivers it typed, rather than skip it, stop,
// or dead-letter it.
func TestAPartitionWaitsForTheCatalogRatherThanSkipAMessage(t *testing.T) {
	pg, err := pgtest.Start(pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Without the schema envelope: the amount is numeric's unscaled value
	// (1230), base64, in Debezium's default precise mode.
	_, addr := seeded(t, ctx, `{"op": "c", "ts_ms": 1, "before": null, "after": {"id": 1, "amount": "BM4="},
		"source": {"connector": "postgresql", "db": "late", "schema": "public", "table": "accounts", "txId": 7, "lsn": 100, "ts_ms": 1}}`)

	var logs testbed.Output
	s, err := Open(ctx, config.Kafka{Brokers: []string{addr}, Topics: []string{"bemi"}, Group: "pgtrail", DLQSuffix: ".dlq", FetchMaxBytes: 8 << 20},
		config.Debezium{Catalog: pg.URL("late")}, slog.New(slog.NewTextHandler(&logs, nil)), metrics.New())
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []pipeline.Event, 16)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx, out) }()
	defer func() {
		stop()
		<-done
		s.Close(context.Background())
	}()

	for !strings.Contains(logs.String(), "decode failed; retrying") {
		select {
		case evs := <-out:
			t.Fatalf("events before the catalog could type them: %+v", evs)
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("no retry logged:\n%s", logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !strings.Contains(logs.String(), "source.debezium.catalog") {
		t.Fatalf("the error does not name source.debezium.catalog:\n%s", logs.String())
	}
	pg.Exec(t, "postgres", "CREATE DATABASE late")
	pg.Exec(t, "late", "CREATE TABLE accounts (id int PRIMARY KEY, amount numeric(10,2))")
	for {
		select {
		case evs := <-out:
			for _, ev := range evs {
				if ev.Kind == pipeline.Row {
					if got := string(ev.Change.After); got != `{"id":1,"amount":12.30}` {
						t.Fatalf("after = %s, want the amount typed by the catalog", got)
					}
					if ev.Change.PrimaryKey != "1" {
						t.Fatalf("primary key %q, want the catalog's key: 1", ev.Change.PrimaryKey)
					}
					return
				}
			}
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("the message never came once the catalog answered:\n%s", logs.String())
		}
	}
}
