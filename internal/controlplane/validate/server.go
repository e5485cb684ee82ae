package validate

import (
	"strings"
	"unicode"

	"github.com/fogo-db/fogo/internal/errcatalog"
)

// ServerSpec is a validated server PUT.
type ServerSpec struct {
	Location                   string
	Tags                       map[string]string
	AdministratorLogin         string
	AdministratorLoginPassword string
	Version                    string
	MinimalTLSVersion          string
	PublicNetworkAccess        string
}

type serverBody struct {
	Location   *string           `json:"location"`
	Tags       map[string]string `json:"tags"`
	Properties *struct {
		AdministratorLogin         *string `json:"administratorLogin"`
		AdministratorLoginPassword *string `json:"administratorLoginPassword"`
		Version                    *string `json:"version"`
		MinimalTLSVersion          *string `json:"minimalTlsVersion"`
		PublicNetworkAccess        *string `json:"publicNetworkAccess"`
	} `json:"properties"`
}

// ServerPut validates a server PUT; existing tells whether the server exists (then login and password are
// optional).
func ServerPut(body []byte, existing bool) (ServerSpec, error) {
	var b serverBody
	if err := decode(body, &b); err != nil {
		if err == errEmpty {
			return ServerSpec{}, errcatalog.New("LocationRequired")
		}
		return ServerSpec{}, err
	}
	var s ServerSpec
	if b.Location == nil || strings.TrimSpace(*b.Location) == "" {
		return s, errcatalog.New("LocationRequired")
	}
	s.Location, s.Tags = strings.TrimSpace(*b.Location), b.Tags
	if b.Properties != nil {
		p := b.Properties
		s.AdministratorLogin = deref(p.AdministratorLogin)
		s.AdministratorLoginPassword = deref(p.AdministratorLoginPassword)
		s.Version, s.MinimalTLSVersion, s.PublicNetworkAccess = deref(p.Version), deref(p.MinimalTLSVersion), deref(p.PublicNetworkAccess)
	}
	if !existing {
		if s.AdministratorLogin == "" {
			return s, invalidValue("properties.administratorLogin", "the administrator login is required when a server is created.")
		}
		if s.AdministratorLoginPassword == "" {
			return s, invalidValue("properties.administratorLoginPassword", "the administrator password is required when a server is created.")
		}
	}
	if s.AdministratorLogin != "" {
		if err := LoginName(s.AdministratorLogin); err != nil {
			return s, err
		}
	}
	if s.AdministratorLoginPassword != "" {
		if err := Password(s.AdministratorLoginPassword, s.AdministratorLogin); err != nil {
			return s, err
		}
	}
	return s, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

var reservedLogins = map[string]bool{
	"postgres": true, "fogo": true, "admin": true, "administrator": true, "root": true, "guest": true,
	"public": true, "sa": true, "dbmanager": true, "loginmanager": true, "dbo": true, "replication": true,
}

// LoginName checks an administrator login: it becomes a PostgreSQL role name.
func LoginName(login string) error {
	bad := len(login) == 0 || len(login) > 63 || reservedLogins[strings.ToLower(login)] ||
		strings.HasPrefix(strings.ToLower(login), "pg_")
	for i, r := range login {
		ok := r == '_' || (r < 128 && unicode.IsLetter(r)) || (i > 0 && r < 128 && unicode.IsDigit(r))
		bad = bad || !ok
	}
	if bad {
		return errcatalog.New("InvalidLoginName", login).WithTarget("properties.administratorLogin")
	}
	return nil
}

// Password applies Azure's complexity rule: 8-128 characters from at least three of upper case, lower case,
// digits and other characters, not containing the login.
func Password(pw, login string) error {
	var upper, lower, digit, other bool
	for _, r := range pw {
		switch {
		case unicode.IsUpper(r):
			upper = true
		case unicode.IsLower(r):
			lower = true
		case unicode.IsDigit(r):
			digit = true
		default:
			other = true
		}
	}
	classes := 0
	for _, b := range []bool{upper, lower, digit, other} {
		if b {
			classes++
		}
	}
	n := len([]rune(pw))
	if n < 8 || n > 128 || classes < 3 || (login != "" && strings.Contains(strings.ToLower(pw), strings.ToLower(login))) {
		return errcatalog.New("PasswordNotComplex").WithTarget("properties.administratorLoginPassword")
	}
	return nil
}

// DatabaseSpec is a validated database PUT.
type DatabaseSpec struct {
	Location     string
	Tags         map[string]string
	Collation    string
	MaxSizeBytes int64
	SKU          *SKU
	CreateMode   string
}

// SKU is a database SKU (accepted and shown; fogo does not size instances by it).
type SKU struct {
	Name     string `json:"name"`
	Tier     string `json:"tier,omitempty"`
	Capacity *int32 `json:"capacity,omitempty"`
}

type databaseBody struct {
	Location   *string           `json:"location"`
	Tags       map[string]string `json:"tags"`
	SKU        *SKU              `json:"sku"`
	Properties *struct {
		Collation    *string `json:"collation"`
		MaxSizeBytes *int64  `json:"maxSizeBytes"`
		CreateMode   *string `json:"createMode"`
	} `json:"properties"`
}

// DatabasePut validates a database PUT.
func DatabasePut(body []byte) (DatabaseSpec, error) {
	var b databaseBody
	if err := decode(body, &b); err != nil {
		if err == errEmpty {
			return DatabaseSpec{}, errcatalog.New("LocationRequired")
		}
		return DatabaseSpec{}, err
	}
	var s DatabaseSpec
	if b.Location == nil || strings.TrimSpace(*b.Location) == "" {
		return s, errcatalog.New("LocationRequired")
	}
	s.Location, s.Tags, s.SKU = strings.TrimSpace(*b.Location), b.Tags, b.SKU
	if s.SKU != nil && s.SKU.Name == "" {
		return s, invalidValue("sku.name", "sku.name is required when sku is given.")
	}
	if b.Properties != nil {
		s.Collation = deref(b.Properties.Collation)
		if b.Properties.MaxSizeBytes != nil {
			s.MaxSizeBytes = *b.Properties.MaxSizeBytes
		}
		if m := deref(b.Properties.CreateMode); m != "" {
			mode, err := enum("properties.createMode", m, "Default")
			if err != nil {
				return s, invalidValue("properties.createMode", "fogo supports only createMode Default; geo-secondaries are created by failover groups.")
			}
			s.CreateMode = mode
		}
	}
	return s, nil
}
