package target

import (
	"context"
	"fmt"
	"testing"

	"github.com/fogo-db/fogo/internal/testutil/pgtest"
)

// TestApplyCommitsDurably: on a PostgreSQL target whose role and database default to synchronous_commit=off, the
// apply transaction (its rows and its checkpoint) runs with synchronous_commit on: triggers inside it record
// current_setting('synchronous_commit').
func TestApplyCommitsDurably(t *testing.T) {
	pg := pgtest.NewPrimary(t)
	ctx := context.Background()
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable", pg.Port, pg.SuperUser, pg.SuperPassword)
	admin, err := OpenPostgres(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, sql := range []string{
		"ALTER DATABASE postgres SET synchronous_commit = off", "ALTER ROLE " + pg.SuperUser + " SET synchronous_commit = off",
		"CREATE TABLE seen(setting text)",
		"CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO seen VALUES (current_setting('synchronous_commit')); RETURN NEW; END $$",
	} {
		if _, err := admin.DB().ExecContext(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	s, err := OpenPostgres(dsn) // connections made after the defaults changed
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var def string
	if err := s.DB().QueryRowContext(ctx, "SHOW synchronous_commit").Scan(&def); err != nil || def != "off" {
		t.Fatalf("the target's sessions default to synchronous_commit=%s (%v), want off", def, err)
	}
	tbl := itemsTable()
	if err := s.EnsureTable(ctx, tbl, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Checkpoint(ctx, "l"); err != nil { // creates the checkpoint table
		t.Fatal(err)
	}
	for _, sql := range []string{
		"CREATE TRIGGER note AFTER INSERT OR UPDATE ON analytics.items FOR EACH ROW EXECUTE FUNCTION note_setting()",
		"CREATE TRIGGER note AFTER INSERT OR UPDATE ON " + checkpointTable + " FOR EACH ROW EXECUTE FUNCTION note_setting()",
	} {
		if _, err := s.DB().ExecContext(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	apply(t, s, 100, ins(tbl, 1, "a"), ins(tbl, 2, "a"))
	apply(t, s, 200, ins(tbl, 1, "b"))
	if err := s.FinishResync(ctx, "l", 300); err != nil { // the end of a resynchronisation writes the checkpoint too
		t.Fatal(err)
	}
	var on, all int
	if err := s.DB().QueryRowContext(ctx, "SELECT count(*) FILTER (WHERE setting = 'on'), count(*) FROM seen").Scan(&on, &all); err != nil {
		t.Fatal(err)
	}
	if all < 4 || on != all {
		t.Fatalf("%d of %d writes of the apply transactions ran with synchronous_commit on", on, all)
	}
}
