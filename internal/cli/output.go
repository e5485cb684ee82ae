package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"
	"text/tabwriter"
)

// column is one column of a table: a header and how to read its cell from a resource.
type column struct {
	header string
	cell   func(res map[string]any) string
}

// field reads a nested value by keys ("properties", "state") and formats it; absent values print as "".
func field(keys ...string) func(map[string]any) string {
	return func(res map[string]any) string {
		var v any = res
		for _, k := range keys {
			m, ok := v.(map[string]any)
			if !ok {
				return ""
			}
			v = m[k]
		}
		switch x := v.(type) {
		case nil:
			return ""
		case string:
			return x
		case float64:
			return fmt.Sprint(int64(x))
		default:
			return fmt.Sprint(x)
		}
	}
}

// serverOfID returns the server name in a resource id.
func serverOfID(id string) string {
	parts := strings.Split(id, "/")
	for i := 0; i+1 < len(parts); i++ {
		if strings.EqualFold(parts[i], "servers") {
			return parts[i+1]
		}
	}
	return ""
}

var (
	serverColumns = []column{
		{"NAME", field("name")},
		{"LOCATION", field("location")},
		{"STATE", field("properties", "state")},
		{"ADMIN", field("properties", "administratorLogin")},
		{"ENDPOINT", field("properties", "endpoint")},
	}
	databaseColumns = []column{
		{"NAME", field("name")},
		{"SERVER", func(r map[string]any) string { return serverOfID(field("id")(r)) }},
		{"LOCATION", field("location")},
		{"STATUS", field("properties", "status")},
		{"FAILOVER GROUP", func(r map[string]any) string {
			if id := field("properties", "failoverGroupId")(r); id != "" {
				return path.Base(id)
			}
			return ""
		}},
		{"ENDPOINT", field("properties", "endpoint")},
	}
	failoverGroupColumns = []column{
		{"NAME", field("name")},
		{"SERVER", func(r map[string]any) string { return serverOfID(field("id")(r)) }},
		{"ROLE", field("properties", "replicationRole")},
		{"STATE", field("properties", "replicationState")},
		{"PARTNER", func(r map[string]any) string {
			p := firstPartner(r)
			return serverOfID(field("id")(p)) + " (" + field("location")(p) + ", " + field("replicationRole")(p) + ")"
		}},
		{"POLICY", func(r map[string]any) string {
			pol := field("properties", "readWriteEndpoint", "failoverPolicy")(r)
			if g := field("properties", "readWriteEndpoint", "failoverWithDataLossGracePeriodMinutes")(r); g != "" {
				pol += " " + g + "m"
			}
			return pol
		}},
		{"RW LISTENER", field("properties", "readWriteEndpoint", "endpoint")},
		{"RO LISTENER", field("properties", "readOnlyEndpoint", "endpoint")},
		{"DATABASES", func(r map[string]any) string {
			props, _ := r["properties"].(map[string]any)
			ids, _ := props["databases"].([]any)
			names := make([]string, 0, len(ids))
			for _, id := range ids {
				s, _ := id.(string)
				names = append(names, path.Base(s))
			}
			return strings.Join(names, ",")
		}},
	}
)

func firstPartner(r map[string]any) map[string]any {
	props, _ := r["properties"].(map[string]any)
	ps, _ := props["partnerServers"].([]any)
	if len(ps) == 0 {
		return nil
	}
	p, _ := ps[0].(map[string]any)
	return p
}

// printResources prints one resource or a list (an ARM {"value": [...]} body) as a table or as indented JSON.
func printResources(w io.Writer, format string, raw []byte, cols []column) error {
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	items := []map[string]any{doc}
	list, isList := doc["value"].([]any)
	if isList {
		items = items[:0]
		for _, it := range list {
			if m, ok := it.(map[string]any); ok {
				items = append(items, m)
			}
		}
	}
	if format == "json" {
		var v any = doc
		if isList {
			v = items
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	headers := make([]string, len(cols))
	for i, c := range cols {
		headers[i] = c.header
	}
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, it := range items {
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = c.cell(it)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
