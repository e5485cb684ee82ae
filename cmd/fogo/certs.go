package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/fogo-db/fogo/internal/pki"
)

// certsCommand is `fogo certs`: the CA and host certificates of a cluster, created or brought up to date in one
// directory (docs/certs.md).
func certsCommand() *cobra.Command {
	var out string
	var hostFlags []string
	cmd := &cobra.Command{
		Use:   "certs --out DIR --host NAME=ADDR[,ADDR...] [--host ...]",
		Short: "Create or update the CA and host certificates of a cluster (idempotent)",
		Long: "Creates DIR/ca.pem and DIR/ca-key.pem (the cluster CA) unless they exist, and for every --host\n" +
			"DIR/NAME.pem and DIR/NAME-key.pem, valid for server and client TLS authentication, for NAME and every ADDR\n" +
			"(IP addresses or DNS names). An existing host certificate is kept while it fits and reissued otherwise;\n" +
			"the CA is never overwritten.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			if len(hostFlags) == 0 {
				return fmt.Errorf("at least one --host NAME=ADDR[,ADDR...] is required")
			}
			hosts := make([]pki.Host, 0, len(hostFlags))
			for _, f := range hostFlags {
				h, err := parseHostFlag(f)
				if err != nil {
					return err
				}
				hosts = append(hosts, h)
			}
			res, err := pki.EnsureCluster(out, hosts)
			if err != nil {
				return err
			}
			printCertsResult(cmd.OutOrStdout(), res)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for the certificates and keys (created 0700)")
	cmd.Flags().StringArrayVar(&hostFlags, "host", nil, "a host: NAME=ADDR[,ADDR...] (repeat for each host)")
	return cmd
}

// parseHostFlag reads NAME=ADDR[,ADDR...]. Names and addresses are checked by pki.EnsureCluster.
func parseHostFlag(s string) (pki.Host, error) {
	name, list, ok := strings.Cut(s, "=")
	if !ok {
		return pki.Host{}, fmt.Errorf("--host %q: want NAME=ADDR[,ADDR...], e.g. db1=10.0.0.1,db1.example.com", s)
	}
	if strings.TrimSpace(name) == "" {
		return pki.Host{}, fmt.Errorf("--host %q: the name before '=' is empty", s)
	}
	if strings.TrimSpace(list) == "" {
		return pki.Host{}, fmt.Errorf("--host %q: no address after '='", s)
	}
	h := pki.Host{Name: strings.TrimSpace(name)}
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			return pki.Host{}, fmt.Errorf("--host %q: empty address in the list", s)
		}
		h.Addrs = append(h.Addrs, a)
	}
	return h, nil
}

func printCertsResult(w io.Writer, res pki.Result) {
	fmt.Fprintf(w, "%-8s %s, %s\n", res.CA, res.CAFile, res.CAKeyFile)
	for _, h := range res.Hosts {
		line := fmt.Sprintf("%-8s %s, %s", h.Status, h.CertFile, h.KeyFile)
		if h.Reason != "" {
			line += " (" + h.Reason + ")"
		}
		fmt.Fprintln(w, line)
	}
}
