import { sql, type Kysely } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "../support/database.js";

/**
 * keygate's writes that must be atomic (rotation: insert the new key and end
 * the old one) run in a Kysely transaction, while decisions keep querying the
 * same store. On PGlite there is one connection: Kysely's own PGliteDialect
 * must still keep the two apart, exactly as a Postgres pool does.
 */

interface Scratch {
  kg_scratch: { label: string };
}

let database: TestDatabase;
let db: Kysely<Scratch>;

beforeAll(async () => {
  database = await createTestDatabase();
  db = database.store.db as unknown as Kysely<Scratch>;
  await sql`create table kg_scratch (label text not null)`.execute(db);
});

afterAll(async () => {
  await database?.dispose();
});

beforeEach(async () => {
  await db.deleteFrom("kg_scratch").execute();
});

async function labels(): Promise<string[]> {
  const rows = await db.selectFrom("kg_scratch").select("label").orderBy("label").execute();
  return rows.map((row) => row.label);
}

/** Lets already-issued queries reach the driver (not a sleep: one turn of the event loop). */
const turn = () => new Promise<void>((done) => setImmediate(done));

describe(`Kysely transactions on ${testDatabaseKind}`, () => {
  it("uses the dialect the suite targets", () => {
    expect(database.store.kind).toBe(testDatabaseKind);
  });

  it("a rolled-back transaction leaves no rows", async () => {
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("kg_scratch").values({ label: "in-tx-1" }).execute();
        await trx.insertInto("kg_scratch").values({ label: "in-tx-2" }).execute();
        const inside = await trx.selectFrom("kg_scratch").select("label").execute();
        expect(inside).toHaveLength(2);
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await labels()).toEqual([]);
  });

  it("a committed transaction keeps its rows", async () => {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto("kg_scratch").values({ label: "committed" }).execute();
    });
    expect(await labels()).toEqual(["committed"]);
  });

  it("a write issued while a transaction is open is not rolled back with it", async () => {
    let outside: Promise<unknown> | undefined;
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("kg_scratch").values({ label: "in-tx" }).execute();
        // Not awaited here: on PGlite it must wait for the transaction, not join it.
        outside = db.insertInto("kg_scratch").values({ label: "outside" }).execute();
        await turn();
        await trx.insertInto("kg_scratch").values({ label: "in-tx-after" }).execute();
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    await outside;
    expect(await labels()).toEqual(["outside"]);
  });

  it("a read issued while a transaction is open never sees its uncommitted rows", async () => {
    let outside: Promise<{ label: string }[]> | undefined;
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("kg_scratch").values({ label: "uncommitted" }).execute();
        outside = db.selectFrom("kg_scratch").select("label").execute();
        await turn();
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await outside).toEqual([]);
  });

  it("queries issued during a transaction all complete, and the transaction's own rows commit", async () => {
    const outside: Promise<unknown>[] = [];
    await db.transaction().execute(async (trx) => {
      await trx.insertInto("kg_scratch").values({ label: "tx" }).execute();
      for (let i = 0; i < 5; i++) outside.push(db.insertInto("kg_scratch").values({ label: `outside-${i}` }).execute());
      await turn();
      await trx.insertInto("kg_scratch").values({ label: "tx-2" }).execute();
    });
    await Promise.all(outside);
    expect(await labels()).toEqual(["outside-0", "outside-1", "outside-2", "outside-3", "outside-4", "tx", "tx-2"]);
  });

  it("a failed statement inside a transaction rolls back the statements before it", async () => {
    await expect(
      db.transaction().execute(async (trx) => {
        await trx.insertInto("kg_scratch").values({ label: "before-error" }).execute();
        await sql`select * from kg_no_such_table`.execute(trx);
      }),
    ).rejects.toThrow(/kg_no_such_table/);
    expect(await labels()).toEqual([]);
    // The store is usable afterwards.
    await db.insertInto("kg_scratch").values({ label: "after" }).execute();
    expect(await labels()).toEqual(["after"]);
  });
});
