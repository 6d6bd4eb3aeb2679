package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ceilingPart is how many rows one COPY of auditCeiling carries: a batch of
// the e2e run (5,000 changes) split over the sink's two writers.
const ceilingPart = 2500

// auditCeiling measures the server's own cost of the trail, the most any
// consumer that writes this audit table can reach on this machine: the rows
// the round's e2e run stored (exported as COPY text beforehand) are copied
// into a fresh audit table made by `pgtrail setup`, over two connections in
// parts of ceilingPart rows, each its own transaction, as the postgres
// sink's writers copy; meanwhile pg_recvlogical decodes the backlog from
// this run's slot. The time runs until both are done.
func (b *bench) auditCeiling(ctx context.Context, bl *backlog, slot string) result {
	name := "audit-ceiling"
	round, _ := strconv.Atoi(slot[strings.LastIndex(slot, "_")+1:])
	from := "pgtrail." + auditTable(slotName("e2e", round))
	if n, err := queryValue[int64](ctx, bl.url, "SELECT count(*) FROM "+from); err != nil || n != bl.changes {
		return skipped(name, fmt.Sprintf("needs the audit table of this round's e2e run, %s, with the whole backlog (-only '^(e2e|audit-ceiling)$'): %d rows (%v)", from, n, err))
	}
	rows := filepath.Join(b.tmp, "ceiling.copy")
	if err := exportCopy(ctx, bl.url, "COPY (SELECT * FROM "+from+") TO STDOUT", rows); err != nil {
		return failed(name, err)
	}
	defer os.Remove(rows)
	table := auditTable(slot)
	t := trail{url: bl.url, slot: slot, sinkName: "audit", plugin: "postgres", sinkConfig: map[string]string{"url": bl.url, "table": table}}
	cfg, _, err := t.write(b.tmp)
	if err != nil {
		return failed(name, err)
	}
	if err := runPgtrail(ctx, b.bin, cfg, "setup"); err != nil { // keeps the existing slot
		return failed(name, err)
	}

	p, started, err := startRecvlogical(bl, slot)
	if err != nil {
		return failed(name, err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = copyParts(ctx, bl.url, "COPY pgtrail."+table+" FROM STDIN", rows, w, len(errs))
		}()
	}
	wg.Wait()
	copied := time.Since(started)
	if err := errors.Join(errs...); err != nil {
		p.stop(time.Second)
		return failed(name, err)
	}
	if err := p.waitDecoded(ctx, bl); err != nil {
		return failed(name, err)
	}
	res := throughput(name, bl.changes, time.Since(started))
	res.Note = fmt.Sprintf("the rows of %s copied by the bench into pgtrail.%s over 2 connections in parts of %d (%s), while pg_recvlogical decoded the backlog (%s, %.1f CPU seconds): the server's cost of the trail with pgtrail's at zero",
		from, table, ceilingPart, copied.Round(time.Millisecond), time.Since(started).Round(time.Millisecond), p.exitedCPU())
	if stored, err := queryValue[int64](ctx, bl.url, "SELECT count(DISTINCT id) FROM pgtrail."+table); err != nil || stored != bl.changes {
		return failed(name, fmt.Errorf("audit table holds %d distinct changes, want %d (%v)", stored, bl.changes, err))
	}
	return res
}

// exportCopy writes what a COPY ... TO STDOUT sends into the file path.
func exportCopy(ctx context.Context, url, sql, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	err = withConn(ctx, url, func(conn *pgx.Conn) error {
		_, err := conn.PgConn().CopyTo(ctx, w, sql)
		return err
	})
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// copyParts copies every nth part of ceilingPart lines of the COPY text file
// path, from part w on, each in a COPY of its own.
func copyParts(ctx context.Context, url, sql, path string, w, nth int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return withConn(ctx, url, func(conn *pgx.Conn) error {
		r := bufio.NewReaderSize(f, 1<<20)
		var part bytes.Buffer
		for i, lines, done := 0, 0, false; !done; {
			line, err := r.ReadBytes('\n')
			if errors.Is(err, io.EOF) {
				done = true
			} else if err != nil {
				return err
			}
			if i%nth == w {
				part.Write(line)
			}
			if lines++; lines == ceilingPart || done {
				if part.Len() > 0 {
					if _, err := conn.PgConn().CopyFrom(ctx, &part, sql); err != nil {
						return fmt.Errorf("copy: %w", err)
					}
				}
				part.Reset()
				lines = 0
				i++
			}
		}
		return nil
	})
}
