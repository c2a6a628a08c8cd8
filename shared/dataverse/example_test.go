package dataverse_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// Build one client per environment and share it. With Key Vault, pass
// keyvault.Secrets.Source("dataverse-client-secret") as Secret instead.
func Example() {
	c, err := dataverse.New(dataverse.Options{
		EnvironmentURL: os.Getenv("DATAVERSE_URL"),
		TenantID:       os.Getenv("DATAVERSE_TENANT_ID"),
		ClientID:       os.Getenv("DATAVERSE_CLIENT_ID"),
		Secret:         dataverse.StaticSecret(os.Getenv("DATAVERSE_CLIENT_SECRET")),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	orderID := "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
	// an order and its line in one atomic change set; $1 is the order
	_, err = c.Batch(ctx, dataverse.ChangeSet(
		dataverse.Op{Method: "PATCH", Path: dataverse.EntityPath("salesorders", orderID), ContentID: "1",
			Body: dataverse.Record{"name": "1001", "customerid_contact@odata.bind": dataverse.Bind("contacts", "…")}},
		dataverse.Op{Method: "POST", Path: "salesorderdetails",
			Body: dataverse.Record{"salesorderid@odata.bind": "$1", "productdescription": "Gift", "isproductoverridden": true}},
	))
	var be *dataverse.BatchError
	switch {
	case errors.As(err, &be):
		fmt.Println("rolled back:", be)
	case dataverse.IsAuthFailure(err):
		fmt.Println("Dataverse unreachable: authentication failed")
	case dataverse.IsRetryable(err):
		fmt.Println("try again later")
	}
}
