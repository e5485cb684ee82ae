package target

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fogo-db/fogo/internal/postgres/scram"
)

// On a PostgreSQL target a query never runs as the target's login (often a superuser, who could read files with
// pg_read_file or run programs with COPY … TO PROGRAM). It runs as the link's reader: a role fogo creates on the
// target (LOGIN, nothing else: not a superuser, no CREATEROLE, no REPLICATION, member of no role) that may SELECT
// the link's target tables and nothing else fogo grants. Its password is random, made anew by every fogo process,
// kept in memory only and set as a SCRAM verifier. The query then runs:
//   - on a connection of its own, in a READ ONLY transaction with statement_timeout set;
//   - as DECLARE CURSOR … FOR the query, sent alone with the extended protocol: PostgreSQL itself refuses several
//     statements and anything but SELECT, VALUES, TABLE or WITH … SELECT without data-modifying parts;
//   - reading MaxRows+1 rows with FETCH, so a huge result is never sent.
// The reader's own rights are checked before every query: if it could call a function that reaches outside the
// database (dblink, postgres_fdw, or any function in an untrusted language such as plpython3u, all callable by
// PUBLIC unless revoked), fogo refuses to run queries and says which.

// readerRole is the name of a link's reader role on a PostgreSQL target.
func readerRole(link string) string {
	sum := sha256.Sum256([]byte(link))
	return "fogo_link_reader_" + hex.EncodeToString(sum[:6])
}

// readerPassword is this process's password for reader roles (set on the role at its first query).
var readerPassword = func() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

// sqlKeywordRe finds a statement's first keyword after comments.
var sqlKeywordRe = regexp.MustCompile(`(?s)^(?:\s+|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+|\()`)

func (pgDialect) query(ctx context.Context, s *Store, r QueryRequest) (*QueryResult, error) {
	if m := sqlKeywordRe.FindStringSubmatch(r.SQL); m != nil {
		switch kw := strings.ToUpper(m[1]); kw {
		case "SELECT", "WITH", "VALUES", "TABLE", "(":
		default:
			return nil, refused("%s statements are not allowed: only one SELECT (or WITH … SELECT, VALUES, TABLE) may run against the link's target", kw)
		}
	}
	if err := s.provisionReader(ctx, r); err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(s.connString)
	if err != nil {
		return nil, fmt.Errorf("postgres target: connection string: %w", err)
	}
	cfg.User, cfg.Password = readerRole(r.Link), readerPassword
	cfg.RuntimeParams["application_name"] = "fogo link query"
	cfg.RuntimeParams["default_transaction_read_only"] = "on"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres target: connect as the link's reader role %s: %w", cfg.User, err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", r.Timeout.Milliseconds())); err != nil {
		return nil, err
	}
	// ExecParams: the extended protocol, one statement only.
	if _, err := conn.PgConn().ExecParams(ctx, "DECLARE fogo_query NO SCROLL CURSOR FOR "+r.SQL, nil, nil, nil, nil).Close(); err != nil {
		return nil, pgQueryError(err)
	}
	rows, err := tx.Query(ctx, fmt.Sprintf("FETCH FORWARD %d FROM fogo_query", r.MaxRows+1))
	if err != nil {
		return nil, pgQueryError(err)
	}
	defer rows.Close()
	rr := resultReader{maxRows: r.MaxRows}
	for _, f := range rows.FieldDescriptions() {
		rr.res.Columns = append(rr.res.Columns, f.Name)
	}
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return nil, err
		}
		if !rr.add(toDriverValues(vals)) {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return nil, pgQueryError(err)
	}
	return &rr.res, nil
}

// provisionReader creates the link's reader role (or sets this process's password on it), grants it what it may
// read, revokes SELECT on any other table it was granted, and checks it can call nothing that reaches outside.
// All of it as the target's login, in one transaction.
func (s *Store) provisionReader(ctx context.Context, r QueryRequest) error {
	role := readerRole(r.Link)
	qrole := qi(role)
	s.readerMu.Lock()
	defer s.readerMu.Unlock()
	db := s.db
	if s.roleAdmin != "" {
		adm, err := sql.Open("pgx", s.roleAdmin)
		if err != nil {
			return fmt.Errorf("postgres target: %w", err)
		}
		defer adm.Close()
		db = adm
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("postgres target: %w", err)
	}
	defer tx.Rollback()
	var exists bool
	if err := tx.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return fmt.Errorf("postgres target: %w", err)
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	if !exists || !s.readerReady[role] {
		stmt := fmt.Sprintf("%s ROLE %s WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 8 PASSWORD '%s'",
			verb, qrole, scram.Verifier(readerPassword))
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42501" {
				return refused("queries of a PostgreSQL target run as a read-only role fogo creates, and the target's login cannot create roles: grant it CREATEROLE (%s)", pe.Message)
			}
			return fmt.Errorf("postgres target: %s role %s: %w", strings.ToLower(verb), role, err)
		}
	}
	if err := grantReader(ctx, tx, role, r.Tables); err != nil {
		return err
	}
	if err := reachesOutside(ctx, tx, role); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("postgres target: %w", err)
	}
	if s.readerReady == nil {
		s.readerReady = map[string]bool{}
	}
	s.readerReady[role] = true
	return nil
}

// grantReader makes SELECT on the link's existing target tables (and USAGE on their schemas) the reader's only
// table privileges: what it was granted on any other table (one removed from the link, say) is revoked.
func grantReader(ctx context.Context, tx *sql.Tx, role string, tables []TableName) error {
	qrole := qi(role)
	var want []string
	for _, t := range tables {
		var reg sql.NullString
		name := qi(t.Schema) + "." + qi(t.Name)
		if err := tx.QueryRowContext(ctx, "SELECT to_regclass($1)::text", name).Scan(&reg); err != nil {
			return fmt.Errorf("postgres target: %w", err)
		}
		if reg.Valid { // a table the link has not created yet is granted at a later query
			want = append(want, name)
		}
	}
	rows, err := tx.QueryContext(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
		WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`, role)
	if err != nil {
		return fmt.Errorf("postgres target: the reader's grants: %w", err)
	}
	var have []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		have = append(have, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, n := range have {
		if !slices.Contains(want, n) {
			if _, err := tx.ExecContext(ctx, "REVOKE ALL ON TABLE "+n+" FROM "+qrole); err != nil {
				return fmt.Errorf("postgres target: revoke %s from the reader: %w", n, err)
			}
		}
	}
	for _, t := range tables {
		name := qi(t.Schema) + "." + qi(t.Name)
		if !slices.Contains(want, name) {
			continue
		}
		for _, stmt := range []string{"GRANT USAGE ON SCHEMA " + qi(t.Schema) + " TO " + qrole, "GRANT SELECT ON TABLE " + name + " TO " + qrole} {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("postgres target: %s: %w", stmt, err)
			}
		}
	}
	return nil
}

// reachesOutside refuses queries when the reader could call something that reaches outside the database: a
// function of dblink or postgres_fdw, a foreign server, a function in an untrusted language (plpython3u, plperlu
// …) or a SECURITY DEFINER function (it runs as its owner) — PostgreSQL lets PUBLIC execute new functions unless
// their owner revoked it.
func reachesOutside(ctx context.Context, tx *sql.Tx, role string) error {
	rows, err := tx.QueryContext(ctx, `
		SELECT DISTINCT CASE WHEN e.extname IS NOT NULL THEN 'functions of the extension ' || e.extname
		                     WHEN p.prosecdef THEN 'the SECURITY DEFINER function ' || p.oid::regprocedure::text
		                     ELSE 'the ' || l.lanname || ' function ' || p.oid::regprocedure::text END
		FROM pg_proc p
		JOIN pg_language l ON l.oid = p.prolang
		LEFT JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
		LEFT JOIN pg_extension e ON e.oid = d.refobjid AND e.extname IN ('dblink', 'postgres_fdw', 'file_fdw', 'adminpack')
		WHERE p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
		  AND (e.extname IS NOT NULL OR (NOT l.lanpltrusted AND l.lanname NOT IN ('internal', 'c')) OR (p.prosecdef AND d.objid IS NULL))
		  AND has_schema_privilege($1, p.pronamespace, 'USAGE') AND has_function_privilege($1, p.oid, 'EXECUTE')
		UNION
		SELECT 'the foreign server ' || srvname FROM pg_foreign_server WHERE has_server_privilege($1, oid, 'USAGE')
		ORDER BY 1 LIMIT 5`, role)
	if err != nil {
		return fmt.Errorf("postgres target: check the reader's rights: %w", err)
	}
	defer rows.Close()
	var found []string
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			return err
		}
		found = append(found, f)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(found) > 0 {
		return refused("fogo runs no query on this target while its read-only role could reach outside the database through %s; revoke EXECUTE (or USAGE) on them from PUBLIC in the target database", strings.Join(found, ", "))
	}
	return nil
}

// pgQueryError says plainly when PostgreSQL refused the query for its kind or for the reader's rights.
func pgQueryError(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	switch {
	case pe.Code == "42501": // insufficient_privilege
		return refused("the link's read-only role may not do that: %s", pe.Message)
	case pe.Code == "25006": // read_only_sql_transaction
		return refused("it writes: %s", pe.Message)
	case pe.Code == "42601" && pe.Position > 0 && pe.Position <= int32(len("DECLARE fogo_query NO SCROLL CURSOR FOR "))+1:
		return refused("only one SELECT (or WITH … SELECT, VALUES, TABLE) may run against the link's target")
	case pe.Code == "0A000" || pe.Code == "42P11": // feature_not_supported (data-modifying WITH), invalid_cursor_definition
		return refused("%s", pe.Message)
	case strings.Contains(pe.Message, "cannot insert multiple commands"):
		return refused("only one statement may run; this query has several")
	}
	return err
}

// toDriverValues hands pgx's decoded values to the shared row reader.
func toDriverValues(vals []any) []driver.Value {
	out := make([]driver.Value, len(vals))
	for i, v := range vals {
		out[i] = v
	}
	return out
}
