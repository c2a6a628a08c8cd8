SELECT p."Id", p."Name", p."Sku", p."ProductTypeId", p."ParentGroupedProductId" FROM "Product" p WHERE p."Id" IN (7,12)
