package pipeline

import (
	"encoding/json"

	"github.com/pgtrail/pgtrail/core/change"
)

// PrefixDDL is the prefix of the messages the DDL event triggers emit
// (source.postgres.ddl); each is stored as a row of operation change.DDL.
const PrefixDDL = "pgtrail_ddl"

// ddlChange turns a DDL message into a change, placed where the message is
// in the stream. It needs the source's position of the message (native
// capture gives it); without one, or with content that is not the event
// trigger's, it returns nil and the message is not stored.
func ddlChange(ev Event) *change.Change {
	if ev.Change == nil {
		return nil
	}
	var m struct {
		Schema    *string         `json:"schema"`
		Table     *string         `json:"table"`
		Tag       string          `json:"command_tag"`
		Objects   json.RawMessage `json:"objects"`
		Statement string          `json:"statement"`
	}
	if json.Unmarshal(ev.Content, &m) != nil || m.Tag == "" {
		return nil
	}
	c := *ev.Change
	c.Operation, c.TransactionID = change.DDL, ev.XID
	if m.Schema != nil {
		c.Schema = *m.Schema
	}
	if m.Table != nil {
		c.Table = *m.Table
	}
	c.After, _ = json.Marshal(struct {
		Tag       string          `json:"command_tag"`
		Objects   json.RawMessage `json:"objects"`
		Statement string          `json:"statement"`
	}{m.Tag, m.Objects, m.Statement})
	c.Before = change.Empty
	// Its own identity: the next row change may share the message's LSN.
	c.ID = change.MakeID(c.Database, c.LSN, "", PrefixDDL, 0)
	return &c
}
