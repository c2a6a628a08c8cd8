SELECT m."Customer_Id", m."CustomerRole_Id" FROM "Customer_CustomerRole_Mapping" m WHERE m."Customer_Id" IN (3,7)
