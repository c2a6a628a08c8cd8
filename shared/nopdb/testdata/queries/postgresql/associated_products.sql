SELECT p."ParentGroupedProductId", p."Id" FROM "Product" p WHERE p."ParentGroupedProductId" IN (20,21) AND p."Deleted" = false ORDER BY p."ParentGroupedProductId", p."DisplayOrder", p."Id"
