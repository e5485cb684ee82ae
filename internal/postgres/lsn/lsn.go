// Package lsn is PostgreSQL's write-ahead-log position: parsed from and printed as "XXXXXXXX/XXXXXXXX".
package lsn

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a byte position in the write-ahead log. Zero means "unknown / none".
type LSN uint64

// Parse reads the textual form "16/B374D848".
func Parse(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("invalid lsn %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid lsn %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid lsn %q", s)
	}
	return LSN(h<<32 | l), nil
}

// String prints the textual form PostgreSQL uses.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// MarshalText makes an LSN print as text in JSON.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses the textual form.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	*l = v
	return err
}
