package e2e

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/sql/armsql"
)

// staticToken is an azcore.TokenCredential that always returns fogo's API token.
type staticToken string

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func sdkOptions(f *fogo) *arm.ClientOptions {
	return &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud: cloud.Configuration{
				ActiveDirectoryAuthorityHost: "https://login.invalid/",
				Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
					cloud.ResourceManager: {Endpoint: f.url, Audience: "https://management.fogo.local"},
				},
			},
			InsecureAllowCredentialWithHTTP: true,
			Retry:                           policy.RetryOptions{MaxRetries: -1},
		},
		DisableRPRegistration: true,
	}
}

var fastPoll = &runtime.PollUntilDoneOptions{Frequency: 200 * time.Millisecond}

// TestAzureSDKForGo drives fogo only through armsql v1.2.0: servers, databases, a failover group, planned and
// forced failover, update, pagers, errors and deletes, all with the SDK's own pollers.
func TestAzureSDKForGo(t *testing.T) {
	f := startFogo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cred := staticToken(f.tok)
	servers, err := armsql.NewServersClient(sub, cred, sdkOptions(f))
	if err != nil {
		t.Fatal(err)
	}
	dbs, _ := armsql.NewDatabasesClient(sub, cred, sdkOptions(f))
	groups, _ := armsql.NewFailoverGroupsClient(sub, cred, sdkOptions(f))

	for name, loc := range map[string]string{"sdk-east": "eastus", "sdk-west": "westus"} {
		p, err := servers.BeginCreateOrUpdate(ctx, rg, name, armsql.Server{
			Location: to.Ptr(loc),
			Properties: &armsql.ServerProperties{
				AdministratorLogin: to.Ptr(login), AdministratorLoginPassword: to.Ptr(password),
			},
		}, nil)
		if err != nil {
			t.Fatalf("create server %s: %v", name, err)
		}
		res, err := p.PollUntilDone(ctx, fastPoll)
		if err != nil {
			t.Fatalf("create server %s: %v", name, err)
		}
		if *res.Name != name || *res.Properties.State != "Ready" || res.Properties.AdministratorLoginPassword != nil {
			t.Fatalf("server %s: %+v", name, res.Properties)
		}
	}
	pager := servers.NewListByResourceGroupPager(rg, nil)
	n := 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Value)
	}
	if n != 2 {
		t.Fatalf("listed %d servers, want 2", n)
	}

	dp, err := dbs.BeginCreateOrUpdate(ctx, rg, "sdk-east", "sales", armsql.Database{Location: to.Ptr("eastus")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := dp.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("create database: %v", err)
	}
	if *db.Properties.Status != armsql.DatabaseStatusOnline {
		t.Fatalf("database status %s", *db.Properties.Status)
	}

	gp, err := groups.BeginCreateOrUpdate(ctx, rg, "sdk-east", "sdk-fg", armsql.FailoverGroup{
		Properties: &armsql.FailoverGroupProperties{
			ReadWriteEndpoint: &armsql.FailoverGroupReadWriteEndpoint{FailoverPolicy: to.Ptr(armsql.ReadWriteEndpointFailoverPolicyManual)},
			PartnerServers:    []*armsql.PartnerInfo{{ID: to.Ptr(serverPath("sdk-west"))}},
			Databases:         []*string{to.Ptr(dbPath("sdk-east", "sales"))},
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := gp.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	if *g.Properties.ReplicationRole != armsql.FailoverGroupReplicationRolePrimary || len(g.Properties.Databases) != 1 {
		t.Fatalf("group: %+v", g.Properties)
	}

	// A failover sent to the primary is refused with the catalogue's code.
	_, err = groups.BeginFailover(ctx, rg, "sdk-east", "sdk-fg", nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.ErrorCode != "FailoverGroupFailoverRequestOnPrimary" || re.StatusCode != http.StatusBadRequest {
		t.Fatalf("failover on primary: %v", err)
	}

	fp, err := groups.BeginFailover(ctx, rg, "sdk-west", "sdk-fg", nil)
	if err != nil {
		t.Fatal(err)
	}
	fr, err := fp.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("planned failover: %v", err)
	}
	if *fr.Properties.ReplicationRole != armsql.FailoverGroupReplicationRolePrimary || *fr.Name != "sdk-fg" {
		t.Fatalf("after planned failover, west sees %+v", fr.Properties)
	}
	f.waitGroupState("sdk-west", "sdk-fg", "CATCH_UP")

	ffp, err := groups.BeginForceFailoverAllowDataLoss(ctx, rg, "sdk-east", "sdk-fg", nil)
	if err != nil {
		t.Fatal(err)
	}
	ffr, err := ffp.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("forced failover: %v", err)
	}
	if *ffr.Properties.ReplicationRole != armsql.FailoverGroupReplicationRolePrimary {
		t.Fatalf("after forced failover, east sees %+v", ffr.Properties)
	}
	f.waitGroupState("sdk-east", "sdk-fg", "CATCH_UP")

	up, err := groups.BeginUpdate(ctx, rg, "sdk-east", "sdk-fg", armsql.FailoverGroupUpdate{
		Properties: &armsql.FailoverGroupUpdateProperties{
			ReadWriteEndpoint: &armsql.FailoverGroupReadWriteEndpoint{
				FailoverPolicy: to.Ptr(armsql.ReadWriteEndpointFailoverPolicyAutomatic), FailoverWithDataLossGracePeriodMinutes: to.Ptr[int32](60),
			},
		},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ur, err := up.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("update group: %v", err)
	}
	if *ur.Properties.ReadWriteEndpoint.FailoverPolicy != armsql.ReadWriteEndpointFailoverPolicyAutomatic || len(ur.Properties.Databases) != 1 {
		t.Fatalf("update: %+v", ur.Properties.ReadWriteEndpoint)
	}

	lp := groups.NewListByServerPager(rg, "sdk-west", nil)
	for lp.More() {
		page, err := lp.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Value) != 1 || *page.Value[0].Properties.ReplicationRole != armsql.FailoverGroupReplicationRoleSecondary {
			t.Fatalf("list from west: %+v", page.Value)
		}
	}

	delp, err := groups.BeginDelete(ctx, rg, "sdk-east", "sdk-fg", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := delp.PollUntilDone(ctx, fastPoll); err != nil {
		t.Fatalf("delete group: %v", err)
	}
	if _, err := groups.Get(ctx, rg, "sdk-east", "sdk-fg", nil); !errors.As(err, &re) || re.StatusCode != 404 {
		t.Fatalf("get deleted group: %v", err)
	}
	ddp, err := dbs.BeginDelete(ctx, rg, "sdk-east", "sales", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ddp.PollUntilDone(ctx, fastPoll); err != nil {
		t.Fatalf("delete database: %v", err)
	}

	// The geo-secondary copy stayed on west as an independent database when the group was deleted.
	dbPager := dbs.NewListByServerPager(rg, "sdk-west", nil)
	var westDBs []string
	for dbPager.More() {
		page, err := dbPager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Value {
			westDBs = append(westDBs, *d.Name)
		}
	}
	if len(westDBs) != 1 || westDBs[0] != "sales" {
		t.Fatalf("databases on west after the group was deleted: %v", westDBs)
	}

	// Servers by subscription, then delete both (west with its database).
	subPager := servers.NewListPager(nil)
	n = 0
	for subPager.More() {
		page, err := subPager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Value)
	}
	if n != 2 {
		t.Fatalf("listed %d servers in the subscription, want 2", n)
	}
	for _, name := range []string{"sdk-east", "sdk-west"} {
		sp, err := servers.BeginDelete(ctx, rg, name, nil)
		if err != nil {
			t.Fatalf("delete server %s: %v", name, err)
		}
		if _, err := sp.PollUntilDone(ctx, fastPoll); err != nil {
			t.Fatalf("delete server %s: %v", name, err)
		}
		if _, err := servers.Get(ctx, rg, name, nil); !errors.As(err, &re) || re.StatusCode != 404 {
			t.Fatalf("get deleted server %s: %v", name, err)
		}
	}
}
