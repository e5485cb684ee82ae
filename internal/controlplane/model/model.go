package model

import (
	"strings"
	"time"

	"github.com/fogo-db/fogo/internal/controlplane/armid"
)

// Server is a logical server in a region.
type Server struct {
	ID         armid.ServerID    `json:"id"`
	Location   string            `json:"location"`
	Tags       map[string]string `json:"tags,omitempty"`
	AdminLogin string            `json:"adminLogin"`
	// AdminVerifier is the SCRAM-SHA-256 verifier of the admin password: the password itself is never stored.
	AdminVerifier string    `json:"adminVerifier"`
	Version       string    `json:"version,omitempty"`
	State         string    `json:"state"` // Ready | Deleting
	GatewayPort   int       `json:"gatewayPort"`
	CreatedAt     time.Time `json:"createdAt"`
	// Host is the agent whose host runs the server's instances (cluster mode; "" in the embedded mode).
	Host string `json:"host,omitempty"`
}

// Agent is a database host registered in cluster mode (fogo agent): where placement may put servers, and how
// the controller reaches the host and its instances.
type Agent struct {
	Name   string `json:"name"`
	Region string `json:"region"`
	// Address is the host's address on the network between fogo's hosts: its instances listen on it.
	Address string `json:"address"`
	// URL is the agent's host API (https://address:port).
	URL string `json:"url"`
	// InstancesDir holds the data directories of the instances placed on the host.
	InstancesDir string `json:"instancesDir"`
	// PortLow and PortHigh bound the ports its instances listen on.
	PortLow      int       `json:"portLow"`
	PortHigh     int       `json:"portHigh"`
	RegisteredAt time.Time `json:"registeredAt"`
	// TLS says the host's instances serve TLS with the host's certificate (installed under InstancesDir/.tls),
	// and the fogo hosts connect to them verifying it.
	TLS bool `json:"tls,omitempty"`
	// AllowFrom are networks, besides the fogo hosts' own addresses, whose clients may log in to the instances.
	AllowFrom []string `json:"allowFrom,omitempty"`
}

// Database states shown as properties.status.
const (
	DBCreating = "Creating"
	DBOnline   = "Online"
	DBDeleting = "Deleting"
	DBOffline  = "Offline"
)

// Database is one database on one server, backed by one PostgreSQL instance.
type Database struct {
	ID         armid.DatabaseID  `json:"id"`
	Location   string            `json:"location"`
	Tags       map[string]string `json:"tags,omitempty"`
	Status     string            `json:"status"`
	DatabaseID string            `json:"databaseId"` // a GUID, as Azure shows
	Instance   string            `json:"instance"`   // Instance.ID
	Collation  string            `json:"collation,omitempty"`
	SKUName    string            `json:"skuName,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	// Group is the failover group key this database belongs to (primary or geo-secondary copy), or "".
	Group string `json:"group,omitempty"`
	// GeoSecondary is true for a copy seeded on the partner server (secondaryType Geo).
	GeoSecondary bool `json:"geoSecondary,omitempty"`
}

// Instance roles, as recorded intent. The role PostgreSQL is actually in is observed separately.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
)

// Instance is one PostgreSQL data directory and the port it listens on.
type Instance struct {
	ID       string         `json:"id"`
	Server   armid.ServerID `json:"server"`
	Database string         `json:"database"`
	Dir      string         `json:"dir"`
	Port     int            `json:"port"`
	// Host is the agent whose host holds Dir (cluster mode; "" is the controller's own machine).
	Host string `json:"host,omitempty"`
	Role string `json:"role"`
	// Upstream is the instance this standby streams from; SlotName the physical slot it uses there.
	Upstream string `json:"upstream,omitempty"`
	SlotName string `json:"slotName,omitempty"`
	// NeedsRejoin marks a former primary that must be rewound (if diverged) and restarted as a standby of
	// Upstream before it may run again: after a forced failover it is fenced until then.
	NeedsRejoin bool `json:"needsRejoin,omitempty"`
	// LostReport is the forced failover (operation ID) whose lost-transaction report waits for this former
	// primary: it is read, in isolation, before it is rewound.
	LostReport string `json:"lostReport,omitempty"`
	// Seeded is false until the base backup of a standby finished.
	Seeded bool `json:"seeded"`
	// Reseed marks a standby whose slot on its upstream was invalidated (max_slot_wal_keep_size): the WAL it needs
	// is gone, so the observer drops the slot and seeds it again from a new base backup (Seeded is false until then).
	Reseed bool `json:"reseed,omitempty"`
	// Epoch is the group epoch at which this instance last became primary (0 for never).
	Epoch int64 `json:"epoch,omitempty"`
	// AdminRights is the version of the rights fogo gives the server's admin login that this instance was last
	// checked to grant as a primary (0: never checked, e.g. created by an older fogo).
	AdminRights int `json:"adminRights,omitempty"`
}

// Replication states of a failover group's databases, as the SDK's ReplicationState enum names them.
const (
	StatePending   = "PENDING"
	StateSeeding   = "SEEDING"
	StateCatchUp   = "CATCH_UP"
	StateSuspended = "SUSPENDED"
)

// Failover group policies.
const (
	PolicyManual    = "Manual"
	PolicyAutomatic = "Automatic"
	RODisabled      = "Disabled"
	ROEnabled       = "Enabled"
)

// GroupDatabase pairs the primary and geo-secondary instance of one database in a group.
type GroupDatabase struct {
	Name      string `json:"name"`
	Primary   string `json:"primary"`   // instance ID on the primary server
	Secondary string `json:"secondary"` // instance ID on the partner server ("" while pending)
}

// FailoverGroup is stored once and shown from both servers, each with its own replicationRole.
type FailoverGroup struct {
	Name            string            `json:"name"`
	Tags            map[string]string `json:"tags,omitempty"`
	Primary         armid.ServerID    `json:"primary"`
	Secondary       armid.ServerID    `json:"secondary"`
	ReadWritePolicy string            `json:"readWritePolicy"`
	GraceMinutes    *int32            `json:"graceMinutes,omitempty"`
	ReadOnlyPolicy  string            `json:"readOnlyPolicy"`
	ReadOnlyTarget  string            `json:"readOnlyTarget,omitempty"`
	SecondaryType   string            `json:"secondaryType,omitempty"`
	Databases       []GroupDatabase   `json:"databases"`
	Epoch           int64             `json:"epoch"`
	Operation       string            `json:"operation,omitempty"` // running operation ID (busy marker)
	CreatedAt       time.Time         `json:"createdAt"`
	// RWPort and ROPort are the group's read-write and read-only listener ports.
	RWPort           int       `json:"rwPort,omitempty"`
	ROPort           int       `json:"roPort,omitempty"`
	LastFailoverKind string    `json:"lastFailoverKind,omitempty"`
	LastFailoverAt   time.Time `json:"lastFailoverAt,omitzero"`
	LastFailoverBy   string    `json:"lastFailoverBy,omitempty"` // "user" or "Automatic policy"
	LastFailoverOp   string    `json:"lastFailoverOp,omitempty"`
}

// Key is the store key of a failover group. Group names are global (in Azure they are DNS names).
func GroupKey(name string) string { return strings.ToLower(name) }

// Key returns the group's store key.
func (g *FailoverGroup) Key() string { return GroupKey(g.Name) }

// RoleOf returns "Primary" or "Secondary" for a server of the group, or "".
func (g *FailoverGroup) RoleOf(s armid.ServerID) string {
	switch s.Key() {
	case g.Primary.Key():
		return "Primary"
	case g.Secondary.Key():
		return "Secondary"
	}
	return ""
}

// PartnerOf returns the other server of the group.
func (g *FailoverGroup) PartnerOf(s armid.ServerID) armid.ServerID {
	if s.Key() == g.Primary.Key() {
		return g.Secondary
	}
	return g.Primary
}

// Database returns the group's entry for a database name (case-insensitive).
func (g *FailoverGroup) Database(name string) (*GroupDatabase, bool) {
	for i := range g.Databases {
		if strings.EqualFold(g.Databases[i].Name, name) {
			return &g.Databases[i], true
		}
	}
	return nil, false
}

// DatabaseKey is the store key of a database.
func DatabaseKey(id armid.DatabaseID) string { return id.Server.Key() + "/" + strings.ToLower(id.Name) }
